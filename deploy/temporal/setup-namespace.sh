#!/bin/sh
# Makes the namespace and the custom search attributes the scheduler writes (BotId, SchedulerRunning,
# NextDueAt; see xbot/temporal.py), then waits until the frontend accepts queries on them, so the
# worker and the API never start against a namespace that would reject their workflows.
# Idempotent: creating an existing namespace is skipped and an existing attribute of the same type
# is accepted, so it runs on every `docker compose up`. Needs only the `temporal` CLI, which reads
# TEMPORAL_ADDRESS, TEMPORAL_API_KEY, TEMPORAL_TLS and friends from the environment.
set -eu

namespace="${TEMPORAL_NAMESPACE:-default}"
retention="${TEMPORAL_NAMESPACE_RETENTION:-7d}"
attempts="${SETUP_MAX_ATTEMPTS:-60}"
pause="${SETUP_RETRY_SECONDS:-2}"
export TEMPORAL_ADDRESS="${TEMPORAL_ADDRESS:-temporal:7233}"

# retry WHAT COMMAND...: the server needs a moment after start (and its caches after each change).
retry() {
    what="$1"
    shift
    attempt=1
    until "$@"; do
        if [ "$attempt" -ge "$attempts" ]; then
            echo "setup-namespace: gave up after $attempts attempts: $what" >&2
            return 1
        fi
        attempt=$((attempt + 1))
        sleep "$pause"
    done
}

namespace_exists_or_created() {
    temporal operator namespace describe --namespace "$namespace" >/dev/null 2>&1 ||
        temporal operator namespace create --namespace "$namespace" --retention "$retention"
}

retry "Temporal at $TEMPORAL_ADDRESS is healthy" temporal operator cluster health
retry "namespace $namespace" namespace_exists_or_created

for attribute in BotId:Keyword SchedulerRunning:Bool NextDueAt:Datetime; do
    retry "search attribute $attribute" temporal operator search-attribute create \
        --namespace "$namespace" --name "${attribute%%:*}" --type "${attribute##*:}"
done

probe="BotId = 'setup-probe' AND SchedulerRunning = true AND NextDueAt > '2000-01-01T00:00:00Z'"
retry "queries on the search attributes" \
    temporal workflow list --namespace "$namespace" --limit 1 --query "$probe"
echo "setup-namespace: $namespace ready with BotId, SchedulerRunning, NextDueAt"
