"""Model parts: what turns an image into patch features and patch scores into a map.

- :mod:`~anomaly.components.backbones`: frozen feature extractors (timm, offline weights)
- :mod:`~anomaly.components.features`: preprocessing and locally aware patch features
- :mod:`~anomaly.components.coreset`: greedy k-center (streaming) coreset
- :mod:`~anomaly.components.memory_bank`: faiss nearest-neighbour search over a bank
- :mod:`~anomaly.components.maps`: patch scores to a blurred anomaly map at the image's size
- :mod:`~anomaly.components.threads`: thread pools scoped to one call
"""
