package dev.optsidecar.server;

import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.server.api.OptimizerService;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import dev.optsidecar.server.model.ModelRegistry;
import dev.optsidecar.server.model.StepAssembly;
import io.grpc.Server;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.netty.shaded.io.netty.channel.EventLoopGroup;
import io.grpc.netty.shaded.io.netty.channel.epoll.Epoll;
import io.grpc.netty.shaded.io.netty.channel.epoll.EpollEventLoopGroup;
import io.grpc.netty.shaded.io.netty.channel.epoll.EpollServerSocketChannel;
import io.grpc.netty.shaded.io.netty.channel.nio.NioEventLoopGroup;
import io.grpc.netty.shaded.io.netty.channel.socket.nio.NioServerSocketChannel;
import io.grpc.protobuf.services.HealthStatusManager;
import io.grpc.protobuf.services.ProtoReflectionServiceV1;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.logging.Logger;

/** The gRPC server: Netty (epoll on Linux), the Optimizer service, health and reflection. */
public final class SidecarServer implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(SidecarServer.class.getName());
    /** Room for one chunk and its header, with margin; no message needs more. */
    static final int MAX_MESSAGE_BYTES = 4 * StepAssembly.MAX_CHUNK_BYTES;
    /** HTTP/2 window per stream: several chunks in flight, so a sender seldom waits a round trip. */
    static final int FLOW_CONTROL_WINDOW = 8 * StepAssembly.MAX_CHUNK_BYTES;

    private final Server server;
    private final CpuEngine engine;
    private final HealthStatusManager health = new HealthStatusManager();
    private final EventLoopGroup boss;
    private final EventLoopGroup workers;
    private final ModelRegistry registry;
    private final Persistence persistence;
    private final OptimizerService service;

    private SidecarServer(String bind, int port, int threads, long memoryLimit, Persistence.Options durability)
            throws IOException {
        engine = new CpuEngine(threads);
        registry = new ModelRegistry(engine, memoryLimit);
        persistence = durability == null ? null : new Persistence(registry, durability);
        service = new OptimizerService(registry, persistence);
        NettyServerBuilder builder = NettyServerBuilder.forAddress(new InetSocketAddress(bind, port));
        if (Epoll.isAvailable()) {
            boss = new EpollEventLoopGroup(1);
            workers = new EpollEventLoopGroup();
            builder.channelType(EpollServerSocketChannel.class);
        } else {
            boss = new NioEventLoopGroup(1);
            workers = new NioEventLoopGroup();
            builder.channelType(NioServerSocketChannel.class);
        }
        server = builder.bossEventLoopGroup(boss)
                .workerEventLoopGroup(workers)
                .maxInboundMessageSize(MAX_MESSAGE_BYTES)
                .flowControlWindow(FLOW_CONTROL_WINDOW)
                // Notice peers that vanish without a reset, so a half-sent step does not hold its
                // model's gradient buffers forever; let clients ping as often as every 10 s.
                .keepAliveTime(30, TimeUnit.SECONDS)
                .keepAliveTimeout(10, TimeUnit.SECONDS)
                .permitKeepAliveTime(10, TimeUnit.SECONDS)
                .addService(service)
                .addService(health.getHealthService())
                .addService(ProtoReflectionServiceV1.newInstance())
                .build();
    }

    /** Starts a server without a state directory; port 0 picks a free one (see {@link #port()}). */
    public static SidecarServer start(String bind, int port, int threads, long memoryLimit) throws IOException {
        return start(bind, port, threads, memoryLimit, null, List.of());
    }

    /**
     * Starts a server that keeps its models durable as {@code durability} says (null: in memory
     * only), after restoring what {@code restore} names ("latest", "MODEL" or "MODEL@ID").
     */
    public static SidecarServer start(String bind, int port, int threads, long memoryLimit,
                                      Persistence.Options durability, List<String> restore) throws IOException {
        SidecarServer s = new SidecarServer(bind, port, threads, memoryLimit, durability);
        try {
            for (String what : restore) {
                if (s.persistence == null) {
                    throw new IllegalArgumentException("--restore needs --state-dir");
                }
                s.persistence.restoreAtStartup(what);
            }
        } catch (IOException | RuntimeException e) {
            s.releaseResources();
            throw e;
        }
        s.server.start();
        s.health.setStatus("", ServingStatus.SERVING);
        s.health.setStatus(OptimizerGrpc.SERVICE_NAME, ServingStatus.SERVING);
        LOG.info(() -> "optsidecar serving on " + bind + ":" + s.port() + " (" + threads + " engine threads, "
                + (Epoll.isAvailable() ? "epoll" : "nio") + ", memory limit " + memoryLimit + " bytes)");
        return s;
    }

    public int port() {
        return server.getPort();
    }

    public ModelRegistry registry() {
        return registry;
    }

    public void awaitTermination() throws InterruptedException {
        server.awaitTermination();
    }

    public Persistence persistence() {
        return persistence;
    }

    /**
     * Graceful shutdown: stops taking steps, snapshots every model that changed since its last
     * snapshot, ends open Step streams with UNAVAILABLE (clients retry against the restarted
     * server), then stops.
     */
    @Override
    public void close() {
        health.enterTerminalState();
        if (persistence != null) {
            persistence.shutdown();
        }
        service.shutdown();
        server.shutdown();
        try {
            if (!server.awaitTermination(5, TimeUnit.SECONDS)) {
                server.shutdownNow();
                server.awaitTermination(5, TimeUnit.SECONDS);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            server.shutdownNow();
        }
        releaseResources();
    }

    private void releaseResources() {
        if (persistence != null) {
            persistence.close();
        }
        boss.shutdownGracefully(0, 1, TimeUnit.SECONDS);
        workers.shutdownGracefully(0, 1, TimeUnit.SECONDS);
        engine.close();
    }
}
