"""Self-supervised pre-training of a ViT encoder without labels: masked autoencoders (``mae``)."""
