"""GameNGen reproduction: the code the diffusion-side root scripts share (see README.md#layout).

- ``gamengen.config``: the model/data contract as dataclasses, presets ``sd14`` and ``tiny``;
- ``gamengen.episodes``: recorded parquet episodes -> frames (held-out split by episode), and
  ``gamengen.samplers`` (frames as tensors, locally shuffled order);
- ``gamengen.windows``: the context windows the world model trains on (the window contract);
- ``gamengen.latent_cache``: the frames' VAE latents, encoded once by ``encode_latents.py``;
- ``gamengen.model``: build / load / save the VAE, frame padding, pixels <-> latents.
"""
