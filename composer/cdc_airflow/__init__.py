"""Airflow / Cloud Composer operators and DAG factories for cdc-history."""
