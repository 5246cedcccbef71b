#!/bin/sh
# Demo backend for add-documentdb / update-documentdb: pretends to provision a DocumentDB.
# portbot runs it without a shell; the run's context arrives as JSON on stdin and as PORT_*
# variables. Every line printed becomes a line in the run's log; exit 0 means SUCCESS.
set -eu
name="$1"
instances="$2"
echo "planning ${name}: ${instances} instance(s) of ${PORT_INPUT_INSTANCE_CLASS:-the current class}"
sleep 1
i=1
while [ "$i" -le "$instances" ]; do
  echo "instance ${name}-${i}: available"
  i=$((i + 1))
done
echo "${name} is ready"
