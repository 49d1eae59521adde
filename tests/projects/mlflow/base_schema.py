"""MLflow's base schema: its first revision alters tables that MLflow creates with
``create_all`` from its initial models (mlflow.store.db.utils._initialize_tables)."""

from sqlalchemy.engine import Connection


def create(connection: Connection) -> None:
    from mlflow.store.tracking.dbmodels.initial_models import Base

    Base.metadata.create_all(connection)
