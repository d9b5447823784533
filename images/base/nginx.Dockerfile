# Test stand-in for the nginx image of the Compose variant (compose_stack_nginx_image),
# built without a registry from the debootstrapped test image: Debian's nginx,
# no default site, conf.d included by Debian's nginx.conf, as in the official image.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
 && rm -f /etc/nginx/sites-enabled/default \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
