"""`jrft search-d`: the smallest d at which a method reaches a target fraction of a reference score.

Every probe is a real `jrft train` run (a Hydra multirun over the seeds, so `hydra/launcher=slurm` sends it
to SLURM); the search only decides which d to probe next from the finished probes' results.json files.
Imports only jrft_cli.core.
"""
