"""blip2-ray: BLIP-2 models, losses and training machinery."""
