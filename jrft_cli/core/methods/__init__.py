"""One module per method: its options dataclass, its `apply(model, options)` step and its `SPEC`
(registered in jrft_cli.core.registry). None of them knows Hydra."""
