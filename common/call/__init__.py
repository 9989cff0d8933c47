"""The call pipeline: one governed LLM call as a sequence of small steps.

    face (parse)  -> credentials -> request (policy, body) -> screen (PII) -> replay
    (idempotency, cache) -> admission (bound, limits, reservation, intent) -> upstream
    -> settle (money, ledger, metrics) -> face (render)

`common.invoke.Invoker` runs them top to bottom. A new API face is a module with a `Face`
(common.call.faces); a new upstream dialect plugs in behind common.llm. Each step takes
and returns the typed values of common.call.model.
"""
