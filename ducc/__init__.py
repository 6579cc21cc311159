"""ducc: container images from Docker/OCI registries, unpacked into a CernVM-FS repository."""

__version__ = "0.1.0"
