"""Watching live traffic: capture requests and responses, compare them with the served version's profile.

`capture` writes and reads SageMaker's data-capture layout (JSON Lines, one record per request);
`reference` is the profile stored with every registered version; `drift` compares the two and returns
a `MonitorReport`; `plots` draws it.
"""
