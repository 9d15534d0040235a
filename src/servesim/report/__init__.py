"""What a plan hands to people and machines.

- `page`: the self-contained HTML report (interactive Plotly figures) and the terminal table.
- `plots`: shared Plotly pieces and the latency CDFs of `servesim compare`.
- `export`: launch commands for vLLM and SGLang and a Kubernetes Deployment for the winner.
"""
