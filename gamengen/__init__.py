"""GameNGen reproduction: the code the diffusion-side root scripts share (see DESIGN.md section 2).

- ``gamengen.config``: the model/data contract as dataclasses, presets ``sd14`` and ``tiny``;
- ``gamengen.data``: recorded parquet episodes -> frames (held-out split by episode);
- ``gamengen.model``: build / load / save the VAE, frame padding, pixels <-> latents.
"""
