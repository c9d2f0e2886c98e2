"""Code shared by the benchmarks in `benchmarks/` and the tests in `tests/`.

Not part of `keras_snr` and not used by the guides: each guide in `guides/`
carries its own copy of the code it teaches, so that it runs on its own.

- `grokking`: modular-arithmetic data, the transformer and MLP, Grokfast-EMA;
- `dpo`: DPO/cDPO/IPO losses, the synthetic language, the tiny causal LM;
- `inr`: the noisy camera image and the Fourier-feature network;
- `pinn_derivatives`: input derivatives of a network, one branch per backend;
- `optimizer_state`: `SNRAdam`'s mean gate from stateless (JAX) state.

Benchmarks import them as `from tasks import grokking` (running
`python benchmarks/NAME.py` puts `benchmarks/` on `sys.path`); so do the
tests (`pythonpath = ["benchmarks"]` in `pyproject.toml`).
"""
