#!/usr/bin/env bash
# /entrypoint of the lab's Airflow image (dumb-init runs it as PID 1's child).
#
# What the official Airflow Helm chart expects of its image, and nothing more:
# - arbitrary uids in group 0 work: a uid without a passwd entry gets one (home /home/airflow),
#   files are created group-writable (umask 0002);
# - before the command, wait until the metadata database answers (`airflow db check`), at most
#   CONNECTION_CHECK_MAX_COUNT times, CONNECTION_CHECK_SLEEP_TIME seconds apart; the chart's
#   liveness probes set CONNECTION_CHECK_MAX_COUNT=0 to skip it;
# - the command: `bash ...` and `python ...` run as given (the chart's `bash -c "exec airflow
#   scheduler"`, the task pods' `python -m airflow.sdk.execution_time.execute_workload ...`),
#   `airflow ARGS` and bare `ARGS` (`db check-migrations`) run the airflow CLI, an absolute path
#   runs that program; no arguments prints the CLI's help.
set -euo pipefail

umask 0002

if ! whoami >/dev/null 2>&1; then
  if [[ -w /etc/passwd ]]; then
    echo "airflow-$(id -u):x:$(id -u):0:airflow user:${AIRFLOW_USER_HOME_DIR:-/home/airflow}:/sbin/nologin" >>/etc/passwd
  fi
  export HOME="${AIRFLOW_USER_HOME_DIR:-/home/airflow}"
fi

if [[ "$(id -g)" != "0" ]]; then
  echo "WARNING: run this image with group 0 (uid $(id -u), gid $(id -g)): its files are writable by group 0 only" >&2
fi

max_checks=${CONNECTION_CHECK_MAX_COUNT:-20}
check_sleep=${CONNECTION_CHECK_SLEEP_TIME:-3}
if ((max_checks > 0)); then
  attempt=1
  until output=$(airflow db check 2>&1); do
    if ((attempt >= max_checks)); then
      echo "ERROR: the metadata database did not answer after ${max_checks} checks (airflow db check):" >&2
      echo "$output" >&2
      exit 1
    fi
    attempt=$((attempt + 1))
    sleep "$check_sleep"
  done
fi

case "${1:-}" in
  "") exec airflow --help ;;
  bash | python | python3) exec "$@" ;;
  airflow) shift; exec airflow "$@" ;;
  /*) exec "$@" ;;
  *) exec airflow "$@" ;;
esac
