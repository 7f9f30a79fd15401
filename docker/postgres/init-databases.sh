#!/bin/bash
# First start of the postgres service only (the image runs /docker-entrypoint-initdb.d/ on an empty data
# directory): one database and one owner role each for Prefect and MLflow, so neither server can read or
# change the other's data. Passwords come from the environment; psql's :'var' quoting keeps them out of
# the SQL text.
set -euo pipefail

create_database() {
    local name="$1" password="$2"
    psql --set ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        --set name="$name" --set password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
}

create_database prefect "$PREFECT_DB_PASSWORD"
create_database mlflow "$MLFLOW_DB_PASSWORD"
