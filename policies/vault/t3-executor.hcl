# Warden tier T3 (executor): Vault/OpenBao ACL policy, mirrors `secrets` of T3 in policies/tiers.toml.
# Written by `warden vault setup` as policy `warden-t3-executor` and attached to every T3 agent's
# AppRole role. Roles get `token_no_default_policy`, so this is all the token may do.
# `secret/` is the KV v2 mount; setup rewrites it when another mount is configured.
# Per-agent paths (`agents/<id>/*`) come from the agent's own policy `warden-agent-<id>`.

# Every Warden token may look itself up, renew itself (long runs) and revoke itself (run end).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/revoke-self" {
  capabilities = ["update"]
}

path "secret/data/t3/*" {
  capabilities = ["read"]
}
