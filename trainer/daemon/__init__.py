"""The trainer daemon (``reachsafe daemon serve``): the ROUTER ingest loop (``ingest``), the durable
step store (``store``), the learner thread (``learner``), the shipped bundles (``bundles``), the
status file (``status``) and the process that ties them together (``serve``)."""
