CREATE DATABASE model_db OWNER airflow;
