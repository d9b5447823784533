# Test stand-in for the Python base of the Compose variant's API image
# (compose_stack_python_image), built without a registry from the
# debootstrapped test image: Debian's python3 with the venv module.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
