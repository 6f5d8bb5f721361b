use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
};

use anyhow::{anyhow, Result};
use futures::stream::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkDummy, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tracing::trace;

/// Wraps an rtnetlink `Handle` for namespace-scoped network operations.
///
/// `Clone` is cheap; `Handle` is an `Arc`-based channel sender.
#[derive(Clone)]
pub(crate) struct Netlink {
    handle: Handle,
}

impl Netlink {
    pub(crate) fn new(handle: Handle) -> Self {
        Self { handle }
    }

    pub(crate) async fn link_index(&self, ifname: &str) -> Result<u32> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(ifname.to_string())
            .execute();
        links
            .try_next()
            .await?
            .map(|msg| msg.header.index)
            .ok_or_else(|| anyhow!("link not found: {}", ifname))
    }

    pub(crate) async fn ensure_link_deleted(&self, ifname: &str) -> Result<()> {
        if let Ok(idx) = self.link_index(ifname).await {
            trace!(ifname = %ifname, "delete link");
            self.handle.link().del(idx).execute().await?;
        }
        Ok(())
    }

    /// Creates bridge `name` with a MAC address of its own. Without one, a
    /// Linux bridge takes the lowest MAC of its ports and changes it when a
    /// port with a lower one joins: hosts that resolved the bridge's IP
    /// before then keep sending to the old MAC, which the bridge no longer
    /// accepts as its own (dropped as "other host"), until their neighbour
    /// entry expires, up to a minute later. An address set at creation is
    /// never replaced.
    pub(crate) async fn add_bridge(&self, name: &str) -> Result<()> {
        trace!(bridge = %name, "add bridge");
        if let Err(err) = self
            .handle
            .link()
            .add(LinkBridge::new(name).address(bridge_mac(name)).build())
            .execute()
            .await
        {
            if is_eexist(&err) {
                trace!(bridge = %name, "bridge already exists");
            } else {
                return Err(err.into());
            }
        }

        Ok(())
    }

    pub(crate) async fn add_veth(&self, a: &str, b: &str) -> Result<()> {
        trace!(a = %a, b = %b, "add veth pair");
        self.handle
            .link()
            .add(LinkVeth::new(a, b).build())
            .execute()
            .await?;
        Ok(())
    }

    /// Creates a veth pair with each end directly in its namespace (`None`:
    /// this one): moving a link later (`IFLA_NET_NS_FD` on an existing link)
    /// waits for RCU under the RTNL lock, tens of ms each, serialised.
    pub(crate) async fn add_veth_in(
        &self,
        a: &str,
        a_ns: Option<&File>,
        b: &str,
        b_ns: Option<&File>,
    ) -> Result<()> {
        use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkInfo};
        trace!(a = %a, b = %b, "add veth pair in namespaces");
        let mut msg = LinkVeth::new(a, b).build();
        if let Some(fd) = a_ns {
            msg.attributes.push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
        }
        if let Some(fd) = b_ns {
            for attr in &mut msg.attributes {
                if let LinkAttribute::LinkInfo(infos) = attr {
                    for info in infos {
                        if let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) = info {
                            peer.attributes.push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
                        }
                    }
                }
            }
        }
        self.handle.link().add(msg).execute().await?;
        Ok(())
    }

    /// Creates a dummy network interface.
    pub(crate) async fn add_dummy(&self, name: &str) -> Result<()> {
        trace!(name = %name, "add dummy");
        self.handle
            .link()
            .add(LinkDummy::new(name).build())
            .execute()
            .await?;
        Ok(())
    }

    pub(crate) async fn set_link_up(&self, ifname: &str) -> Result<()> {
        trace!(ifname = %ifname, "set link up");
        let idx = self.link_index(ifname).await?;
        let msg = LinkUnspec::new_with_index(idx).up().build();
        self.handle.link().change(msg).execute().await?;
        Ok(())
    }

    pub(crate) async fn set_link_down(&self, ifname: &str) -> Result<()> {
        trace!(ifname = %ifname, "set link down");
        let idx = self.link_index(ifname).await?;
        let msg = LinkUnspec::new_with_index(idx).down().build();
        self.handle.link().change(msg).execute().await?;
        Ok(())
    }

    /// Sets the MTU on an interface.
    pub(crate) async fn set_mtu(&self, ifname: &str, mtu: u32) -> Result<()> {
        trace!(ifname = %ifname, mtu, "set mtu");
        let idx = self.link_index(ifname).await?;
        let msg = LinkUnspec::new_with_index(idx).mtu(mtu).build();
        self.handle.link().change(msg).execute().await?;
        Ok(())
    }

    pub(crate) async fn rename_link(&self, from: &str, to: &str) -> Result<()> {
        trace!(from = %from, to = %to, "rename link");
        let idx = self.link_index(from).await?;
        let msg = LinkUnspec::new_with_index(idx).name(to.to_string()).build();
        self.handle.link().change(msg).execute().await?;
        Ok(())
    }

    pub(crate) async fn set_master(&self, ifname: &str, master: &str) -> Result<()> {
        trace!(ifname = %ifname, master = %master, "set master");
        let idx = self.link_index(ifname).await?;
        let midx = self.link_index(master).await?;
        let msg = LinkUnspec::new_with_index(idx).controller(midx).build();
        self.handle.link().set(msg).execute().await?;
        Ok(())
    }

    pub(crate) async fn move_link_to_netns(&self, ifname: &str, ns_fd: &File) -> Result<()> {
        trace!(ifname = %ifname, "move link to netns");
        let idx = self.link_index(ifname).await?;
        let msg = LinkUnspec::new_with_index(idx)
            .setns_by_fd(ns_fd.as_raw_fd())
            .build();
        self.handle.link().change(msg).execute().await?;
        Ok(())
    }

    /// Removes an IPv4 address from an interface.
    pub(crate) async fn del_addr4(&self, ifname: &str, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        trace!(ifname = %ifname, ip = %ip, prefix, "del addr4");
        let idx = self.link_index(ifname).await?;
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(idx)
            .set_address_filter(ip.into())
            .execute();
        while let Some(addr) = addrs.try_next().await? {
            if addr.header.prefix_len == prefix {
                self.handle.address().del(addr).execute().await?;
                return Ok(());
            }
        }
        Ok(())
    }

    pub(crate) async fn add_addr4(&self, ifname: &str, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        trace!(ifname = %ifname, ip = %ip, prefix, "add addr4");
        let idx = self.link_index(ifname).await?;
        if let Err(err) = self
            .handle
            .address()
            .add(idx, ip.into(), prefix)
            .execute()
            .await
        {
            if is_eexist(&err) {
                return Ok(());
            }
            return Err(err.into());
        }
        Ok(())
    }

    pub(crate) async fn add_default_route_v4(&self, via: Ipv4Addr) -> Result<()> {
        trace!(via = %via, "add default route v4");
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().gateway(via).build();
        if let Err(err) = self.handle.route().add(msg).execute().await {
            if is_eexist(&err) {
                return Ok(());
            }
            return Err(err.into());
        }
        Ok(())
    }

    pub(crate) async fn replace_default_route_v4(&self, ifname: &str, via: Ipv4Addr) -> Result<()> {
        trace!(ifname = %ifname, via = %via, "replace default route v4");
        let ifindex = self.link_index(ifname).await?;

        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(route) = routes.try_next().await? {
            if route.header.destination_prefix_length == 0 {
                let _ = self.handle.route().del(route).execute().await;
            }
        }

        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(ifindex)
            .gateway(via)
            .build();
        self.handle.route().add(msg).execute().await?;
        Ok(())
    }

    pub(crate) async fn add_route_v4(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        via: Ipv4Addr,
    ) -> Result<()> {
        trace!(dst = %dst, prefix, via = %via, "add route v4");
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .gateway(via)
            .build();
        if let Err(err) = self.handle.route().add(msg).execute().await {
            if is_eexist(&err) {
                return Ok(());
            }
            return Err(err.into());
        }
        Ok(())
    }

    /// Replaces (or creates) a route for an IPv4 prefix via a gateway.
    ///
    /// Equivalent to `ip route replace <dst>/<prefix> via <via>`.
    pub(crate) async fn replace_route_v4(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        via: Ipv4Addr,
    ) -> Result<()> {
        trace!(dst = %dst, prefix, via = %via, "replace route v4");
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .gateway(via)
            .build();
        self.handle.route().add(msg).replace().execute().await?;
        Ok(())
    }

    /// Adds a route for an IPv4 prefix via a specific output device (no gateway).
    pub(crate) async fn add_route_v4_dev(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        dev: &str,
    ) -> Result<()> {
        let idx = self.link_index(dev).await?;
        trace!(dst = %dst, prefix, dev = %dev, idx, "add route v4 dev");
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .output_interface(idx)
            .build();
        if let Err(err) = self.handle.route().add(msg).execute().await {
            if is_eexist(&err) {
                return Ok(());
            }
            return Err(err.into());
        }
        Ok(())
    }

    // ── IPv6 methods ──

    pub(crate) async fn add_addr6(&self, ifname: &str, ip: Ipv6Addr, prefix: u8) -> Result<()> {
        trace!(ifname = %ifname, ip = %ip, prefix, "add addr6");
        let idx = self.link_index(ifname).await?;
        if let Err(err) = self
            .handle
            .address()
            .add(idx, ip.into(), prefix)
            .execute()
            .await
        {
            if is_eexist(&err) {
                return Ok(());
            }
            return Err(err.into());
        }
        Ok(())
    }

    pub(crate) async fn add_default_route_v6(&self, via: Ipv6Addr) -> Result<()> {
        trace!(via = %via, "add default route v6");
        let msg = RouteMessageBuilder::<Ipv6Addr>::new().gateway(via).build();
        if let Err(err) = self.handle.route().add(msg).execute().await {
            if is_eexist(&err) {
                return Ok(());
            }
            return Err(err.into());
        }
        Ok(())
    }

    /// Adds a scoped IPv6 default route via `ifname`, ignoring EEXIST.
    pub(crate) async fn add_default_route_v6_scoped(
        &self,
        ifname: &str,
        via: Ipv6Addr,
    ) -> Result<()> {
        trace!(ifname = %ifname, via = %via, "add default route v6 scoped");
        let ifindex = self.link_index(ifname).await?;
        let msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .output_interface(ifindex)
            .gateway(via)
            .build();
        if let Err(err) = self.handle.route().add(msg).execute().await {
            if is_eexist(&err) {
                return Ok(());
            }
            return Err(err.into());
        }
        Ok(())
    }

    /// Replaces the IPv6 default route via `ifname` (deletes all existing defaults first).
    pub(crate) async fn replace_default_route_v6(&self, ifname: &str, via: Ipv6Addr) -> Result<()> {
        trace!(ifname = %ifname, via = %via, "replace default route v6");
        let ifindex = self.link_index(ifname).await?;

        self.delete_default_routes_v6().await?;

        let msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .output_interface(ifindex)
            .gateway(via)
            .build();
        self.handle.route().add(msg).execute().await?;
        Ok(())
    }

    /// Sets the IPv6 default route for a device interface, handling link-local
    /// vs global dispatch. Pass `None` to clear the default route.
    pub(crate) async fn set_default_route_v6(
        &self,
        ifname: &str,
        via: Option<Ipv6Addr>,
    ) -> Result<()> {
        match via {
            Some(gw) => self.replace_default_route_v6(ifname, gw).await,
            None => self.clear_default_route_v6().await,
        }
    }

    pub(crate) async fn clear_default_route_v6(&self) -> Result<()> {
        trace!("clear default route v6");
        self.delete_default_routes_v6().await
    }

    async fn delete_default_routes_v6(&self) -> Result<()> {
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute();
        while let Some(route) = routes.try_next().await? {
            if route.header.destination_prefix_length == 0 {
                let _ = self.handle.route().del(route).execute().await;
            }
        }
        Ok(())
    }

    pub(crate) async fn add_route_v6(
        &self,
        dst: Ipv6Addr,
        prefix: u8,
        via: Ipv6Addr,
    ) -> Result<()> {
        trace!(dst = %dst, prefix, via = %via, "add route v6");
        let msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst, prefix)
            .gateway(via)
            .build();
        if let Err(err) = self.handle.route().add(msg).execute().await {
            if is_eexist(&err) {
                return Ok(());
            }
            return Err(err.into());
        }
        Ok(())
    }

    /// Adds a route for an IPv6 prefix via a specific output device (no gateway).
    pub(crate) async fn add_route_v6_dev(
        &self,
        dst: Ipv6Addr,
        prefix: u8,
        dev: &str,
    ) -> Result<()> {
        let idx = self.link_index(dev).await?;
        trace!(dst = %dst, prefix, dev = %dev, idx, "add route v6 dev");
        let msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst, prefix)
            .output_interface(idx)
            .build();
        if let Err(err) = self.handle.route().add(msg).execute().await {
            if is_eexist(&err) {
                return Ok(());
            }
            return Err(err.into());
        }
        Ok(())
    }
}

fn is_eexist(err: &rtnetlink::Error) -> bool {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg
            .code
            .map(|code| -code.get() == libc::EEXIST)
            .unwrap_or(false),
        _ => false,
    }
}

/// A random, locally administered unicast MAC address for bridge `name`.
fn bridge_mac(name: &str) -> Vec<u8> {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    name.hash(&mut h);
    let v = h.finish().to_le_bytes();
    vec![(v[0] & 0xfc) | 0x02, v[1], v[2], v[3], v[4], v[5]]
}
