"""A site and a cloud for tests and benchmarks: two real, secure mosquittos, the site's
bridged to the cloud's across an emulated WAN that can be cut.

The WAN is shaped by ``tc tbf`` in a network namespace when asked and this host allows
it (``lab.netns``, as root), else it is the loopback relay (``lab.wan``); both add the
RTT, pace to the rate and reset every connection on ``cut()``.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from splitmq.broker.bridge import Bridge
from splitmq.broker.launcher import Broker, free_port
from splitmq.broker.secure import SecureDir
from splitmq.device.follow import local_plan
from splitmq.device.runtime import Device
from splitmq.edge.worker import edge_worker
from splitmq.lab.emulation import Emulated
from splitmq.lab.netns import ShapedWan, why_not
from splitmq.lab.speed import slowed
from splitmq.lab.wan import WanRelay
from splitmq.planner.control import Control
from splitmq.planner.service import PlannerService
from splitmq.shared.model.pool import ModelVersion
from splitmq.shared.runtime.worker import Worker
from splitmq.shared.units import Link

#: The outage scenario's edge, slowed: slower than the cloud across the WAN.
EDGE_SPEED = 0.005


class SiteAndCloud:
    """The cloud broker (with a user per site in ``sites``; the first is bridged), the
    WAN and the site broker (with ``devices``). ``close`` stops all, whatever failed."""

    def __init__(
        self,
        root: Path,
        rtt_ms: float,
        bps: float,
        *,
        sites: tuple[str, ...] = ("north",),
        devices: tuple[str, ...] = (),
        shaped: bool = False,
        binary: Path | None = None,
    ) -> None:
        self.site_name = sites[0]
        self.shaped = shaped and why_not() is None
        self._stack = ExitStack()
        try:
            self._start(root, rtt_ms, bps, sites, devices, binary)
        except BaseException:
            self._stack.close()
            raise

    def _start(
        self,
        root: Path,
        rtt_ms: float,
        bps: float,
        sites: tuple[str, ...],
        devices: tuple[str, ...],
        binary: Path | None,
    ) -> None:
        self.wan: ShapedWan | WanRelay
        hosts: list[str] = []
        if self.shaped:
            tls_port = free_port()
            self.wan = ShapedWan(tls_port, rtt_ms, f"{int(bps)}bit")
            self._stack.callback(self.wan.close)
            hosts = [self.wan.host_side, self.wan.host]
        self.cloud_dir = SecureDir.init(root / "cloud", hosts)
        for site in sites:
            self.cloud_dir.add_site(site)
        self.site_dir = SecureDir.init(root / self.site_name, devices=list(devices))
        if self.shaped:  # reached where the relay in the namespace reaches it
            cloud = Broker(secure=self.cloud_dir.root, tls_port=tls_port, tls_host=hosts[0])
        else:
            cloud = Broker(secure=self.cloud_dir.root)
        self.cloud = self._stack.enter_context(cloud)
        if not self.shaped:
            self.wan = WanRelay(("127.0.0.1", self.cloud.tls_port), rtt_ms, bps)
            self._stack.callback(self.wan.close)
        login = self.cloud_dir.client_env(self.site_name)
        self.bridge = Bridge.load(self.site_name, login, f"mqtts://{self.wan.host}:{self.wan.port}")
        broker = Broker(secure=self.site_dir.root, bridge=self.bridge, binary=binary)
        self.site = self._stack.enter_context(broker)

    def offloading(
        self, stack: ExitStack, pool_dir: Path, mv: ModelVersion, device: str, tag: str
    ) -> tuple[PlannerService, Device]:
        """The outage scenario, started on ``stack``: a cloud worker at the cloud; at the
        site a slow edge (speed 0.005), the site's planner (dwell 1 s) and ``device``, slow
        too (0.002) on a fast link, so that the cloud is its plan while the WAN is up."""
        pool = {"pool": pool_dir}
        cloud = self.cloud.user_settings("cloud", **pool)
        stack.enter_context(Worker(cloud, "cloud", f"{tag}-cloud"))
        edge = self.site.user_settings("edge", site=self.site_name, **pool)
        stack.enter_context(
            edge_worker(edge, f"{tag}-edge", threads=1, executor=slowed(EDGE_SPEED))
        )
        planner = PlannerService(
            self.site.user_settings("planner", site=self.site_name, **pool),
            f"{tag}-planner",
            control=Control(dwell_s=1.0),
            speeds={"edge": EDGE_SPEED},  # as fast as it is: no switch to learn it
            period_s=0.5,
            min_gap_s=0.1,
        )
        stack.enter_context(planner)
        dev = Device(
            self.site.user_settings(device, **pool),
            device,
            local_plan(mv),
            conditions=Emulated(Link.parse("100mbit/2ms"), 0.002),
            follow=True,
            telemetry_period_s=0.5,
            window=2,
            timeout_s=3.0,
        )
        return planner, stack.enter_context(dev)

    def close(self) -> None:
        self._stack.close()
