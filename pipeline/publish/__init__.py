"""The one atomic publish: pushing, labels, rollback, approvals and the versions on disk."""
