"""Operations on a workspace: run, retrain, compile and the workspace lock."""
