"""trt-pipeline: YAML recipes in, versioned GPU-tagged TensorRT engines out."""

__version__ = "0.1.0"
