#!/usr/bin/env bash
# Submits an orderflow pipeline to a Flink cluster through Beam's FlinkRunner.
# Not ready yet: see the issue "Flink submission".
echo "run_flink.sh: not implemented yet (issue: Flink submission)" >&2
exit 2
