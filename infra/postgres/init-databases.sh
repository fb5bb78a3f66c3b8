#!/bin/sh
# Runs once, on the first start of an empty PostgreSQL data volume (docker-entrypoint-initdb.d):
# one login role and one database each for MLflow and Prefect, with the passwords of infra/.env.
# Changing a password later: ALTER ROLE ... PASSWORD ... (this script does not run again).
# The values travel as psql variables (:'name' quotes them), never spliced into the SQL text.
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in infra/.env}"
: "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD in infra/.env}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v mlflow_password="$MLFLOW_DB_PASSWORD" -v prefect_password="$PREFECT_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
REVOKE ALL ON DATABASE prefect FROM PUBLIC;
SQL
