"""ModelFleet: Kubernetes-native fleets of image-generation models."""

__version__ = "0.1.0"
GROUP = "modelfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
# Dev only: pods with this annotation are backed by a local process (modelfleet_dev.podrunner).
LOCAL_RUN_ANNOTATION = f"{GROUP}/local-run"
