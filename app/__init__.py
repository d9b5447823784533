"""Demo API deployed by the ``api`` role (the seed's ``app.api:app``)."""
