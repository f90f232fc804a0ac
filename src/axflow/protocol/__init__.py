"""AxBench's rules as pure functions over arrays and tables: which rows train a concept
(`training`), how a detector is scored (`detection`), and how strongly and in which way a concept
steers a generation (`steering`). No specs, no paths: the stages, the tests and the benches call
these, so the protocol is written once."""
