"""The `servesim` command line (entry point `main.main`): one module per command, plus the
flags and settings schemas they share (`settings`, `deployment_flags`, `workload_flags`,
`cluster_flags`) and the console output (`output`)."""
