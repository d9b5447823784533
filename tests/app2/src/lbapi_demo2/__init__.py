"""Second demo API of the lbapi.nginx_api tests, installed from an artifact."""
