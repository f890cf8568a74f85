from nettrim_jax.cli.app import run

run()
