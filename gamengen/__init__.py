"""GameNGen reproduction: the code the diffusion-side root scripts share (see README.md#layout).

- ``gamengen.config``: the model/data contract as dataclasses, presets ``sd14`` and ``tiny``;
- ``gamengen.layout``: how a dataset's files are laid out (columns, frame timing, the metadata contract);
- ``gamengen.episodes``: recorded parquet episodes -> frames (held-out split by episode), and
  ``gamengen.samplers`` (frames as tensors, locally shuffled order);
- ``gamengen.windows``: the context windows the world model trains on (the window contract);
- ``gamengen.latent_cache``: the frames' VAE latents, encoded once by ``encode_latents.py``;
- ``gamengen.vae``: build / load / save the VAE, frame padding, pixels <-> latents;
- ``gamengen.model``: the world model (UNet + action embedding), its scheduler and context conditioning;
- ``gamengen.checkpoint``: the world model's checkpoint folder (save, load), ``gamengen.peer`` for the seed's;
- ``gamengen.training`` (the loop both trainers share) and ``gamengen.run_folder`` (its checkpoints, resuming);
- ``gamengen.engine``: the game engine, with ``gamengen.ddim`` (its sampler), ``gamengen.actions``,
  ``gamengen.context``, ``gamengen.cli``, ``gamengen.devices`` and ``gamengen.media`` around it;
- ``gamengen.idm`` / ``gamengen.idm_training``: the inverse-dynamics model of evaluation; ``gamengen.metrics``;
- ``gamengen.play``: live play (browser, desktop window, scripted); ``gamengen.study``: the human study page;
- ``gamengen.WorldModelEnv`` (``gamengen.world_model_env``): the world model as a gymnasium environment.
"""


def __getattr__(name: str):
    """``gamengen.WorldModelEnv`` (the world model as a gymnasium environment), imported when first used."""
    if name == "WorldModelEnv":
        from gamengen.world_model_env import WorldModelEnv

        return WorldModelEnv
    raise AttributeError(f"module 'gamengen' has no attribute {name!r}")
