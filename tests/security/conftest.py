"""The role matrix's world (a tenant with an owner, admin, developer, finance member, an outsider and
staff), shared with the authorization matrix here rather than built twice."""
from tests.console.test_role_matrix import world  # noqa: F401
