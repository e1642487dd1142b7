"""Workers: the Celery app, its tasks and the scheduler jobs (the event pipeline).

Tasks are thin wrappers over the plain functions of `broker/` (for polling:
`broker.polling.poll_source`). The pipeline itself lands with the event-pipeline issue;
until then `broker poll` and `broker replay` run those functions in-process.
"""
