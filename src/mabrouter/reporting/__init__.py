"""`mabrouter report`: one self-contained HTML page about an experiment, pictures first.

The page is made in separate steps, each a module that knows only its own job:

1. `read`: what is stored (the experiment, switches, audit trail, decision and outcome logs), as text;
   the only module here that talks to the store.
2. `decode`: through the routers' own decoder (store/experiment_decoder.py) into domain terms, and the
   exposure log into numpy arrays.
3. `estimate`: the routers' state and evidence, guardrail probabilities, and the `estimators` (bandit
   vs holdout, inverse-propensity-weighted arm values: pure functions of numpy arrays).
4. `data`: the view, everything the page shows, in plain dataclasses; `data.gather` runs steps 1 to 4.
   `lift` arranges each arm's comparison with the control (made by `core.summary`, as for `status`);
   `panels` decides which panels have nothing to show (left out, and named once with the reason).
5. Render: `charts` and `lift_chart` (matplotlib figures on the `canvas`, as base64 PNGs), `sections`
   (the numbers, built from `markup`) and `html` (the page: inline CSS, images as data: URIs, no
   external assets).

Needs the optional dependency matplotlib (`charts` only): `pip install 'mabrouter[report]'`.
"""
