# Airflow 3 image with this package's pinned dependencies (see requirements.txt).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends \
        pkg-config libmariadb-dev gcc git openssh-client mariadb-client \
    && rm -rf /var/lib/apt/lists/*
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PYTHONPATH=/opt/airflow/plugins:/opt/airflow/include \
    DATASET_PROJECTS_DIR=/opt/airflow/include/projects \
    DATASET_WORK_DIR=/opt/airflow/work
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt
COPY dags /opt/airflow/dags
COPY plugins /opt/airflow/plugins
COPY include /opt/airflow/include
# The C export engine (falls back to the Python engine without it; --strict: fail the build instead)
COPY scripts/build_fastexport.py /opt/airflow/scripts/build_fastexport.py
RUN cd /opt/airflow && python scripts/build_fastexport.py --strict
WORKDIR /opt/airflow
