//! The `sluiced` configuration a lab writes for each daemon it starts.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::loader::Role;

/// How the daemon attaches XDP (`xdp_mode` in the config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpModeSetting {
    #[default]
    Auto,
    Native,
    Generic,
}

/// What the daemon does with its XDP attachments when it exits (`on_exit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExit {
    /// Programs stay attached through pinned links: the next daemon takes over hitlessly.
    #[default]
    Keep,
    Detach,
}

/// One interface the daemon attaches to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterfaceConfig {
    pub name: String,
    pub role: Role,
}

/// The daemon's YAML config, as the daemon/CLI contract defines it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaemonConfig {
    pub pin_dir: PathBuf,
    /// `unix:<path>` or `host:port`.
    pub api: String,
    pub xdp_mode: XdpModeSetting,
    pub on_exit: OnExit,
    pub interfaces: Vec<InterfaceConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerSetting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSetting>,
}

/// `controller:`: the daemon serves the intent API from this store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ControllerSetting {
    pub store: PathBuf,
}

/// `agent:`: the daemon programs host `host` from the controller at `controller`
/// (`unix:<path>` or `host:port`; `None`: its own API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentSetting {
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resync_secs: Option<u64>,
}

impl DaemonConfig {
    pub fn render(&self) -> Result<String> {
        serde_yaml::to_string(self).context("rendering the sluiced config")
    }
}

/// What a test asks for; the lab fills in the pin dir and API socket.
#[derive(Clone, Debug, Default)]
pub struct DaemonSpec {
    pub interfaces: Vec<InterfaceConfig>,
    pub xdp_mode: XdpModeSetting,
    pub on_exit: OnExit,
    pub controller: Option<ControllerSetting>,
    pub agent: Option<AgentSetting>,
}

impl DaemonSpec {
    /// A daemon with `role` on each of `names`.
    pub fn with(role: Role, names: &[&str]) -> Self {
        Self::default().interfaces(role, names)
    }

    pub fn interfaces(mut self, role: Role, names: &[&str]) -> Self {
        self.interfaces
            .extend(names.iter().map(|n| InterfaceConfig {
                name: n.to_string(),
                role,
            }));
        self
    }

    pub fn on_exit(mut self, on_exit: OnExit) -> Self {
        self.on_exit = on_exit;
        self
    }

    pub fn xdp_mode(mut self, mode: XdpModeSetting) -> Self {
        self.xdp_mode = mode;
        self
    }

    /// Serve the intent API, persisted in `store`.
    pub fn controller(mut self, store: impl Into<PathBuf>) -> Self {
        self.controller = Some(ControllerSetting {
            store: store.into(),
        });
        self
    }

    /// Program host `host` from the controller at `controller` (`None`: this daemon).
    pub fn agent(mut self, host: &str, controller: Option<String>) -> Self {
        self.agent = Some(AgentSetting {
            host: host.to_string(),
            controller,
            resync_secs: None,
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DaemonConfig {
        let spec = DaemonSpec::with(Role::Vm, &["sl0001-vm1", "sl0001-vm2"])
            .interfaces(Role::Underlay, &["sl0001-ul"])
            .on_exit(OnExit::Keep);
        DaemonConfig {
            pin_dir: "/run/sluice/bpffs/sl0001-h".into(),
            api: "unix:/run/sluice/sl0001/h.sock".into(),
            xdp_mode: spec.xdp_mode,
            on_exit: spec.on_exit,
            interfaces: spec.interfaces,
            controller: spec.controller,
            agent: spec.agent,
        }
    }

    #[test]
    fn renders_every_field_of_the_contract() {
        let yaml = sample().render().unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["pin_dir"].as_str(), Some("/run/sluice/bpffs/sl0001-h"));
        assert_eq!(v["api"].as_str(), Some("unix:/run/sluice/sl0001/h.sock"));
        assert_eq!(v["xdp_mode"].as_str(), Some("auto"));
        assert_eq!(v["on_exit"].as_str(), Some("keep"));
        let ifaces = v["interfaces"].as_sequence().unwrap();
        assert_eq!(ifaces.len(), 3);
        assert_eq!(ifaces[0]["name"].as_str(), Some("sl0001-vm1"));
        assert_eq!(ifaces[0]["role"].as_str(), Some("vm"));
        assert_eq!(ifaces[2]["name"].as_str(), Some("sl0001-ul"));
        assert_eq!(ifaces[2]["role"].as_str(), Some("underlay"));
    }

    #[test]
    fn the_daemon_accepts_the_rendered_config() {
        let parsed = crate::config::Config::from_yaml(&sample().render().unwrap()).unwrap();
        assert_eq!(parsed.pin_dir, sample().pin_dir);
        assert_eq!(parsed.api.to_string(), "unix:/run/sluice/sl0001/h.sock");
        assert_eq!(parsed.on_exit, crate::config::OnExit::Keep);
        let names: Vec<_> = parsed
            .interfaces
            .iter()
            .map(|i| (i.name.as_str(), i.role))
            .collect();
        assert_eq!(
            names,
            [
                ("sl0001-vm1", Role::Vm),
                ("sl0001-vm2", Role::Vm),
                ("sl0001-ul", Role::Underlay)
            ]
        );
    }

    #[test]
    fn the_daemon_accepts_controller_and_agent_settings() {
        let spec = DaemonSpec::default()
            .controller("/run/sluice/sl0001/intent.redb")
            .agent("h2", Some("unix:/run/sluice/sl0001/h1.sock".into()));
        let mut c = sample();
        c.controller = spec.controller;
        c.agent = spec.agent;
        let parsed = crate::config::Config::from_yaml(&c.render().unwrap()).unwrap();
        assert_eq!(
            parsed.controller.unwrap().store,
            PathBuf::from("/run/sluice/sl0001/intent.redb")
        );
        let agent = parsed.agent.unwrap();
        assert_eq!(agent.host, "h2");
        assert_eq!(
            agent.controller.unwrap().to_string(),
            "unix:/run/sluice/sl0001/h1.sock"
        );
    }

    #[test]
    fn modes_render_in_snake_case() {
        let mut c = sample();
        c.xdp_mode = XdpModeSetting::Generic;
        c.on_exit = OnExit::Detach;
        let v: serde_yaml::Value = serde_yaml::from_str(&c.render().unwrap()).unwrap();
        assert_eq!(v["xdp_mode"].as_str(), Some("generic"));
        assert_eq!(v["on_exit"].as_str(), Some("detach"));
    }
}
