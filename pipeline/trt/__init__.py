"""TensorRT and the GPU: which backend, what it can build, targets and tags, running engines, Polygraphy."""
