"""`jrft bench`: every method's speed and memory side by side, one module per concern.

timing      the one timing primitive (`measure`: warm-up, round-robin rounds with device sync,
            median and quartiles, peak memory); every number below comes from it
rows        a row's identity (a dict of axes) and its method settings, from the method registry
workload    the batches rows step on: a synthetic fixed batch, or Poisson batches of a GLUE task
steps       sections train (optimizer step), eval (no_grad forward) and private (DP-SGD step)
inference   section inference: base model vs a method as jrft runs it vs its `jrft export`
projection  section projection: the projection table and z -> shifts time vs a training step
naive_jr    the naive reference jr (dense W_l parameters, opacus' generic per-sample hooks)
targets     the issue's targets evaluated on a report
report      environment record, Markdown / rich rendering, writing without clobbering others' files
run         settings in, report out (what `jrft bench` calls)
"""
