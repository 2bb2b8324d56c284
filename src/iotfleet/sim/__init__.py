"""The fleet simulator: fleet model, workload, runner, metrics and report (``iotfleet simulate``)."""
