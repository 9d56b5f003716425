"""ModelFleet: Kubernetes-native fleets of image-generation models."""

__version__ = "0.1.0"
GROUP = "modelfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
