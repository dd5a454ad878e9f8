//! Which kind of server each side is: self-managed PostgreSQL, or a managed service
//! that gives out no superuser and lets an admin role stand in for one (Amazon RDS
//! and Aurora, Cloud SQL, Azure Database for PostgreSQL flexible server). Detection
//! reads only what the server shows; the fixes whose wording depends on the
//! platform (the knob behind `wal_level`, where static parameters are set, which
//! grant replaces a superuser) are written here, so that `source`, `target` and
//! `risks` only decide whether there is a finding.

use serde::Serialize;

use crate::catalog::ident;
use crate::check::{Ctx, Level};
use crate::db::Db;
use crate::dsn::Side;
use crate::error::Error;

/// The kind of server, as [`detect`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    SelfManaged,
    Rds,
    CloudSql,
    Azure,
}

/// A managed service as its servers show it: the admin role its customers get in
/// place of a superuser, and a setting only that service defines.
struct Service {
    platform: Platform,
    name: &'static str,
    admin: &'static str,
    setting: &'static str,
}

const SERVICES: [Service; 3] = [
    Service {
        platform: Platform::Rds,
        name: "Amazon RDS",
        admin: "rds_superuser",
        setting: "rds.logical_replication",
    },
    Service {
        platform: Platform::CloudSql,
        name: "Cloud SQL",
        admin: "cloudsqlsuperuser",
        setting: "cloudsql.logical_decoding",
    },
    Service {
        platform: Platform::Azure,
        name: "Azure Database for PostgreSQL",
        admin: "azure_pg_admin",
        setting: "azure.extensions",
    },
];

/// On Amazon RDS, membership in this role (which `rds_superuser` has) allows
/// replication; the REPLICATION attribute takes a superuser to set.
const RDS_REPLICATION: &str = "rds_replication";

/// The service whose admin role exists and whose own setting is defined; else
/// self-managed. Both are required: the roles of a managed server, dumped with
/// `pg_dumpall --roles-only` and restored, bring its admin role to a self-managed
/// server, which is where a migration off the service ends up.
pub fn detect(roles: &[String], settings: &[String]) -> Platform {
    SERVICES
        .iter()
        .find(|s| roles.iter().any(|r| r == s.admin) && settings.iter().any(|g| g == s.setting))
        .map_or(Platform::SelfManaged, |s| s.platform)
}

impl Platform {
    fn service(self) -> Option<&'static Service> {
        SERVICES.iter().find(|s| s.platform == self)
    }

    pub fn name(self) -> &'static str {
        self.service().map_or("self-managed PostgreSQL", |s| s.name)
    }

    /// The role that stands in for a superuser; none on a self-managed server.
    pub fn admin(self) -> Option<&'static str> {
        self.service().map(|s| s.admin)
    }

    /// The fix for static server parameter `name`, which must be `value` on `side`.
    /// None of the services allows `ALTER SYSTEM`.
    pub fn set_static(self, side: Side, name: &str, value: &str) -> String {
        match self {
            Platform::SelfManaged => {
                format!("ALTER SYSTEM SET {name} = {value}; then restart the {side} server")
            }
            Platform::Rds => format!(
                "set {name} = {value} in the {side} instance's DB parameter group (its DB cluster \
                 parameter group on Aurora), then reboot the instance: the parameter is static"
            ),
            Platform::CloudSql => format!(
                "set the database flag {name} = {value} on the {side} instance (saving the flag \
                 restarts the instance)"
            ),
            Platform::Azure => format!(
                "set the server parameter {name} = {value} on the {side} server (portal, or `az \
                 postgres flexible-server parameter set`), then restart it: the parameter is static"
            ),
        }
    }

    /// The fix for a `wal_level` below `logical` on `side`: RDS and Cloud SQL set
    /// it from a knob of their own.
    pub fn logical_wal(self, side: Side) -> String {
        match self {
            Platform::Rds => format!(
                "set rds.logical_replication = 1 in the {side} instance's DB parameter group (its DB \
                 cluster parameter group on Aurora), then reboot the instance: the parameter is \
                 static, and RDS sets wal_level = logical from it"
            ),
            Platform::CloudSql => format!(
                "set the database flag cloudsql.logical_decoding = on on the {side} instance (saving \
                 the flag restarts the instance); Cloud SQL sets wal_level = logical from it"
            ),
            Platform::SelfManaged | Platform::Azure => {
                self.set_static(side, "wal_level", "logical")
            }
        }
    }

    /// The grant that lets `user` create a replication slot and stream changes.
    pub fn grant_replication(self, user: &str) -> String {
        let u = ident(user);
        match self {
            Platform::SelfManaged => format!("ALTER ROLE {u} REPLICATION"),
            Platform::Rds => format!(
                "GRANT {RDS_REPLICATION} TO {u} (as a member of rds_superuser: Amazon RDS grants \
                 replication through that role)"
            ),
            Platform::CloudSql => format!(
                "ALTER USER {u} WITH REPLICATION (as a member of cloudsqlsuperuser, e.g. the \
                 postgres user)"
            ),
            Platform::Azure => format!(
                "ALTER ROLE {u} WITH REPLICATION (as a member of azure_pg_admin, e.g. the server's \
                 admin user)"
            ),
        }
    }

    /// The grant that lets `user` end other roles' sessions.
    pub fn grant_signal(self, user: &str) -> String {
        let u = ident(user);
        match self.service() {
            None => format!("connect as a superuser, or GRANT pg_signal_backend TO {u}"),
            Some(s) => format!(
                "GRANT pg_signal_backend TO {u} (as a member of {}; {} has no superuser to connect as)",
                s.admin, s.name
            ),
        }
    }

    /// Who may create a subscription before PostgreSQL 16, and how `user` becomes one.
    pub fn grant_subscribe_pre16(self, user: &str) -> String {
        match self.service() {
            None => "connect to the target as a superuser (PostgreSQL 15 and older allow only \
                     superusers to create subscriptions)"
                .into(),
            Some(s) => format!(
                "GRANT {} TO {}: PostgreSQL 15 and older allow only superusers to create \
                 subscriptions, and on {} its members stand in for one",
                s.admin,
                ident(user),
                s.name
            ),
        }
    }

    /// How `user` comes to publish a table `owner` owns.
    pub fn grant_ownership(self, user: &str, owner: &str) -> String {
        match self.service() {
            None => "connect as a superuser or as the table's owner".into(),
            Some(s) => format!(
                "connect as its owner {owner}, or GRANT {} TO {} ({} has no superuser)",
                ident(owner),
                ident(user),
                s.name
            ),
        }
    }

    /// Who could end a superuser's session before the switchover.
    pub fn end_superuser_session(self, pid: i32) -> String {
        match self.service() {
            None => format!(
                "stop it before the switchover (a superuser can SELECT pg_terminate_backend({pid})), \
                 or run the controller as a superuser"
            ),
            Some(s) => format!(
                "wait for it to end before the switchover: on {} the only superuser is the \
                 provider's own role, whose sessions no other role may end",
                s.name
            ),
        }
    }
}

/// One side's server and the controller's role on it.
#[derive(Debug, Clone)]
pub struct Server {
    pub platform: Platform,
    pub user: String,
    pub superuser: bool,
    /// A member of the platform's admin role.
    pub admin: bool,
    /// May create a replication slot and stream changes: a superuser, the
    /// REPLICATION attribute, or on Amazon RDS membership in `rds_replication`.
    pub replication: bool,
}

impl Server {
    /// Reads the platform's signs and the controller's role in one query.
    pub async fn read(db: &Db) -> Result<Server, Error> {
        let roles: Vec<&str> = SERVICES
            .iter()
            .map(|s| s.admin)
            .chain([RDS_REPLICATION])
            .collect();
        let settings: Vec<&str> = SERVICES.iter().map(|s| s.setting).collect();
        let row = db
            .query_one(
                "read the server's platform and the user's roles",
                "SELECT current_user::text, r.rolsuper, r.rolreplication, \
                        ARRAY(SELECT a.rolname::text FROM pg_roles a \
                              WHERE a.rolname = ANY ($1::text[]) ORDER BY 1), \
                        ARRAY(SELECT a.rolname::text FROM pg_roles a \
                              WHERE a.rolname = ANY ($1::text[]) \
                                AND pg_has_role(current_user, a.oid, 'MEMBER') ORDER BY 1), \
                        ARRAY(SELECT g FROM unnest($2::text[]) AS g \
                              WHERE current_setting(g, true) IS NOT NULL ORDER BY 1) \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[&roles, &settings],
            )
            .await?;
        let (user, superuser, attribute): (String, bool, bool) =
            (row.get(0), row.get(1), row.get(2));
        let (present, member_of, defined): (Vec<String>, Vec<String>, Vec<String>) =
            (row.get(3), row.get(4), row.get(5));
        let platform = detect(&present, &defined);
        let member = |role: &str| member_of.iter().any(|m| m == role);
        Ok(Server {
            platform,
            admin: platform.admin().is_some_and(member),
            replication: superuser
                || attribute
                || (platform == Platform::Rds && member(RDS_REPLICATION)),
            user,
            superuser,
        })
    }
}

/// Names each managed side's platform and whether the controller's role holds its
/// admin role, since every fix after it is worded for that platform.
pub fn report(ctx: &mut Ctx<'_>) {
    for side in [Side::Source, Side::Target] {
        let s = ctx.server(side);
        let Some(admin) = s.platform.admin() else {
            continue;
        };
        let standing = if s.superuser {
            "is a superuser".to_string()
        } else if s.admin {
            format!("is a member of {admin}")
        } else {
            format!("is not a member of {admin}, which stands in for a superuser there")
        };
        let problem = format!("{} ({} {standing})", s.platform.name(), s.user);
        ctx.add(Level::Info, side, "platform".into(), problem, String::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn detect_wants_the_admin_role_and_the_services_own_setting() {
        assert_eq!(detect(&[], &[]), Platform::SelfManaged);
        assert_eq!(
            detect(
                &names(&["rds_replication", "rds_superuser"]),
                &names(&["rds.logical_replication"])
            ),
            Platform::Rds
        );
        assert_eq!(
            detect(
                &names(&["cloudsqlsuperuser"]),
                &names(&["cloudsql.logical_decoding"])
            ),
            Platform::CloudSql
        );
        assert_eq!(
            detect(&names(&["azure_pg_admin"]), &names(&["azure.extensions"])),
            Platform::Azure
        );
        // Roles restored from a managed server's dump: still self-managed.
        assert_eq!(
            detect(&names(&["rds_superuser", "cloudsqlsuperuser"]), &[]),
            Platform::SelfManaged
        );
        // One service's role with another's setting is neither.
        assert_eq!(
            detect(&names(&["rds_superuser"]), &names(&["azure.extensions"])),
            Platform::SelfManaged
        );
    }

    #[test]
    fn self_managed_fixes_stay_as_they_were() {
        let p = Platform::SelfManaged;
        assert_eq!(
            p.logical_wal(Side::Source),
            "ALTER SYSTEM SET wal_level = logical; then restart the source server"
        );
        assert_eq!(p.grant_replication("app"), "ALTER ROLE \"app\" REPLICATION");
        assert_eq!(
            p.grant_signal("app"),
            "connect as a superuser, or GRANT pg_signal_backend TO \"app\""
        );
        assert_eq!(p.admin(), None);
    }

    #[test]
    fn managed_fixes_name_the_services_knob_and_grant() {
        let rds = Platform::Rds.logical_wal(Side::Source);
        assert!(
            rds.starts_with(
                "set rds.logical_replication = 1 in the source instance's DB parameter group"
            ),
            "{rds}"
        );
        assert!(rds.contains("reboot the instance"), "{rds}");
        let sql = Platform::CloudSql.logical_wal(Side::Target);
        assert!(
            sql.starts_with(
                "set the database flag cloudsql.logical_decoding = on on the target instance"
            ),
            "{sql}"
        );
        let az = Platform::Azure.logical_wal(Side::Source);
        assert!(
            az.starts_with("set the server parameter wal_level = logical on the source server"),
            "{az}"
        );
        assert!(
            Platform::Rds
                .set_static(Side::Target, "max_replication_slots", "8")
                .starts_with(
                    "set max_replication_slots = 8 in the target instance's DB parameter group"
                )
        );

        assert!(
            Platform::Rds
                .grant_replication("app")
                .starts_with("GRANT rds_replication TO \"app\"")
        );
        assert!(
            Platform::CloudSql
                .grant_replication("app")
                .starts_with("ALTER USER \"app\" WITH REPLICATION")
        );
        assert!(
            Platform::Azure
                .grant_replication("app")
                .starts_with("ALTER ROLE \"app\" WITH REPLICATION")
        );
        for (p, admin) in [
            (Platform::Rds, "rds_superuser"),
            (Platform::CloudSql, "cloudsqlsuperuser"),
            (Platform::Azure, "azure_pg_admin"),
        ] {
            assert_eq!(p.admin(), Some(admin));
            assert!(
                p.grant_subscribe_pre16("app")
                    .starts_with(&format!("GRANT {admin} TO \"app\""))
            );
            assert!(!p.grant_signal("app").contains("connect as a superuser"));
            assert!(
                !p.end_superuser_session(7)
                    .contains("run the controller as a superuser")
            );
        }
    }
}
