#!/usr/bin/env bash
# /clean-logs of the lab's Airflow image: what the Airflow Helm chart's log-groomer sidecars run
# (`bash /clean-logs`, next to the scheduler, triggerer and DAG processor), with the settings the
# chart passes:
#   AIRFLOW__LOG_RETENTION_DAYS (15) + AIRFLOW__LOG_RETENTION_MINUTES (0)  delete older log files
#   AIRFLOW__LOG_CLEANUP_FREQUENCY_MINUTES (15)                              how often
#   AIRFLOW__LOG_MAX_SIZE_BYTES, else AIRFLOW__LOG_MAX_SIZE_PERCENT of the volume (0 = no cap):
#     then delete the oldest log files until the logs fit
# Only files under $AIRFLOW_HOME/logs are touched; emptied directories go too.
set -euo pipefail

logs="${AIRFLOW_HOME:-/opt/airflow}/logs"
retention_minutes=$((${AIRFLOW__LOG_RETENTION_DAYS:-15} * 1440 + ${AIRFLOW__LOG_RETENTION_MINUTES:-0}))
every_seconds=$((${AIRFLOW__LOG_CLEANUP_FREQUENCY_MINUTES:-15} * 60))
max_bytes=${AIRFLOW__LOG_MAX_SIZE_BYTES:-0}
max_percent=${AIRFLOW__LOG_MAX_SIZE_PERCENT:-0}

size_cap() {
  if ((max_bytes > 0)); then
    echo "$max_bytes"
  elif ((max_percent > 0)); then
    echo $(($(df --output=size -B1 "$logs" | tail -1) * max_percent / 100))
  else
    echo 0
  fi
}

groom() {
  find "$logs" -type f -name '*.log' -mmin +"$retention_minutes" -delete
  local cap total size path
  cap=$(size_cap)
  if ((cap > 0)); then
    total=$(find "$logs" -type f -name '*.log' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    # Oldest first, until the rest fits under the cap.
    while ((total > cap)) && read -r _ size path; do
      rm -f -- "$path"
      total=$((total - size))
    done < <(find "$logs" -type f -name '*.log' -printf '%T@ %s %p\n' | sort -n)
  fi
  find "$logs" -mindepth 1 -type d -empty -delete
}

echo "Grooming ${logs}: log files older than ${retention_minutes} min, every ${every_seconds} s"
while true; do
  groom
  sleep "$every_seconds"
done
