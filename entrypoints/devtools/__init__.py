"""Development tools: the mock chat channels (a stand-in for Meta's APIs in compose and tests)."""
