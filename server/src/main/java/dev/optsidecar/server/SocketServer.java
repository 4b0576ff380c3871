package dev.optsidecar.server;

import dev.optsidecar.server.auth.Plaintext;
import dev.optsidecar.server.auth.TokenAuthority;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import dev.optsidecar.server.model.Limits;
import dev.optsidecar.server.model.StepAssembly;
import dev.optsidecar.server.shm.SharedMemory;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.netty.shaded.io.netty.channel.EventLoopGroup;
import io.grpc.netty.shaded.io.netty.channel.epoll.Epoll;
import io.grpc.netty.shaded.io.netty.channel.epoll.EpollEventLoopGroup;
import io.grpc.netty.shaded.io.netty.channel.epoll.EpollServerDomainSocketChannel;
import io.grpc.netty.shaded.io.netty.channel.epoll.EpollServerSocketChannel;
import io.grpc.netty.shaded.io.netty.channel.nio.NioEventLoopGroup;
import io.grpc.netty.shaded.io.netty.channel.socket.nio.NioServerSocketChannel;
import io.grpc.netty.shaded.io.netty.channel.unix.DomainSocketAddress;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.logging.Logger;

/**
 * The server as Main runs it: Netty on TCP sockets and Unix domain sockets (epoll on Linux), the CPU engine, and the
 * {@link SidecarServer} they are handed to. Closing it closes all three, and the TLS and token files' watchers.
 */
public final class SocketServer implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(SocketServer.class.getName());
    /** HTTP/2 window per stream: several chunks in flight, so a sender seldom waits a round trip. */
    static final int FLOW_CONTROL_WINDOW = 8 * StepAssembly.MAX_CHUNK_BYTES;

    private final EventLoopGroup boss;
    private final EventLoopGroup workers;
    private final Engine engine;
    private ServerTls tls;
    private TokenAuthority tokens;
    private SidecarServer server;
    private List<ListenAddress> listening = List.of();

    private SocketServer(Engine engine) {
        if (Epoll.isAvailable()) {
            boss = new EpollEventLoopGroup(1);
            workers = new EpollEventLoopGroup();
        } else {
            boss = new NioEventLoopGroup(1);
            workers = new NioEventLoopGroup();
        }
        this.engine = engine;
    }

    /** Starts a server without a state directory; port 0 picks a free one (see {@link #port()}). */
    public static SocketServer start(String bind, int port, int threads, long memoryLimit) throws IOException {
        return start(bind, port, threads, memoryLimit, null, List.of());
    }

    /** Starts a server on {@code bind:port}; see {@link SidecarServer#start} for durability and restore. */
    public static SocketServer start(String bind, int port, int threads, long memoryLimit,
                                     Persistence.Options durability, List<String> restore) throws IOException {
        return start(bind, port, threads, memoryLimit, durability, restore, Limits.DEFAULTS);
    }

    /** As {@link #start(String, int, int, long, Persistence.Options, List)}, bounding what clients may make it hold. */
    public static SocketServer start(String bind, int port, int threads, long memoryLimit,
                                     Persistence.Options durability, List<String> restore, Limits limits)
            throws IOException {
        return start(List.of(new ListenAddress.Tcp(bind, port)), threads, memoryLimit, durability, restore, limits);
    }

    /**
     * How the listeners are exposed: TLS on the TCP ones (null: plaintext; Unix sockets stay
     * plaintext), a plaintext health-only port (null: none), whether reflection is served, and
     * the tokens the API's calls need (null: none).
     */
    public record Exposure(ServerTls tls, ListenAddress.Tcp healthAddress, boolean reflection, TokenAuthority tokens) {
        public static final Exposure PLAINTEXT = new Exposure(null, null, true);

        /** Without tokens: the API open to whoever reaches it. */
        public Exposure(ServerTls tls, ListenAddress.Tcp healthAddress, boolean reflection) {
            this(tls, healthAddress, reflection, null);
        }
    }

    /** Starts a server listening on every address of {@code listen} (TCP ports and Unix sockets). */
    public static SocketServer start(List<ListenAddress> listen, int threads, long memoryLimit,
                                     Persistence.Options durability, List<String> restore, Limits limits)
            throws IOException {
        return start(listen, Exposure.PLAINTEXT, threads, memoryLimit, durability, restore, limits, SharedMemory.off());
    }

    /** As {@link #start(List, int, long, Persistence.Options, List, Limits)}, opening clients' segments in {@code shm}. */
    public static SocketServer start(List<ListenAddress> listen, int threads, long memoryLimit,
                                     Persistence.Options durability, List<String> restore, Limits limits,
                                     SharedMemory shm) throws IOException {
        return start(listen, Exposure.PLAINTEXT, threads, memoryLimit, durability, restore, limits, shm);
    }

    /** As {@link #start(List, int, long, Persistence.Options, List, Limits)}, exposed as {@code exposure} says. */
    public static SocketServer start(List<ListenAddress> listen, Exposure exposure, int threads, long memoryLimit,
                                     Persistence.Options durability, List<String> restore, Limits limits)
            throws IOException {
        return start(listen, exposure, threads, memoryLimit, durability, restore, limits, SharedMemory.off());
    }

    /**
     * Starts a server listening on every address of {@code listen}, exposed as {@code exposure}
     * says, opening clients' shared segments in {@code shm}; closing the server closes its TLS.
     */
    public static SocketServer start(List<ListenAddress> listen, Exposure exposure, int threads, long memoryLimit,
                                     Persistence.Options durability, List<String> restore, Limits limits,
                                     SharedMemory shm)
            throws IOException {
        return start(listen, exposure, new CpuEngine(threads), memoryLimit, durability, restore, limits, shm);
    }

    /**
     * As {@link #start(List, Exposure, int, long, Persistence.Options, List, Limits, SharedMemory)},
     * computing on {@code engine}, which the server then owns and closes.
     */
    public static SocketServer start(List<ListenAddress> listen, Exposure exposure, Engine engine, long memoryLimit,
                                     Persistence.Options durability, List<String> restore, Limits limits,
                                     SharedMemory shm)
            throws IOException {
        SocketServer s = new SocketServer(engine);
        s.tls = exposure.tls();
        s.tokens = exposure.tokens();
        try {
            List<NettyServerBuilder> transports = new ArrayList<>();
            for (ListenAddress address : listen) {
                transports.add(s.transport(address, exposure.tls()));
            }
            List<NettyServerBuilder> healthOnly = exposure.healthAddress() == null ? List.of()
                    : List.of(s.transport(exposure.healthAddress(), null));
            s.server = SidecarServer.start(new SidecarServer.Endpoints(transports, healthOnly, exposure.reflection(),
                            exposure.tokens()),
                    s.engine, memoryLimit, durability, restore, limits, shm);
        } catch (IOException e) {
            s.close();
            List<ListenAddress> all = new ArrayList<>(listen);
            if (exposure.healthAddress() != null) {
                all.add(exposure.healthAddress());
            }
            throw bindFailure(e, all);
        } catch (RuntimeException e) {
            s.close();
            throw e;
        }
        s.listening = listen.stream().map(a -> a instanceof ListenAddress.Tcp tcp && tcp.port() == 0
                ? new ListenAddress.Tcp(tcp.host(), s.port()) : a).toList();
        String security = exposure.tls() == null ? "" : exposure.tls().requiresClientCertificates()
                ? ", TCP with mutual TLS" : ", TCP with TLS";
        String health = exposure.healthAddress() == null ? "" : ", health on " + new ListenAddress.Tcp(
                exposure.healthAddress().host(), s.server.healthPort());
        String tokens = exposure.tokens() == null ? "" : ", tokens from " + exposure.tokens().file();
        warnIfOpenToOtherHosts(s.listening, exposure);
        LOG.info(() -> "optsidecar serving on " + s.listening.stream().map(Object::toString)
                .collect(java.util.stream.Collectors.joining(", ")) + security + tokens + health
                + " (" + (engine.device().isEmpty() ? engine.threads() + " engine threads"
                        : "engine " + engine.name() + " on " + engine.device()) + ", "
                + (Epoll.isAvailable() ? "epoll" : "nio") + ", memory limit " + memoryLimit + " bytes)");
        return s;
    }

    /** Neither tokens nor client certificates, on an address other hosts reach: anyone there may do anything. */
    private static void warnIfOpenToOtherHosts(List<ListenAddress> listen, Exposure exposure) {
        List<ListenAddress.Tcp> reachable = Plaintext.reachableFromOtherHosts(listen);
        if (exposure.tokens() == null && !reachable.isEmpty()
                && (exposure.tls() == null || !exposure.tls().requiresClientCertificates())) {
            LOG.warning(() -> "the API on " + reachable.stream().map(Object::toString)
                    .collect(java.util.stream.Collectors.joining(", ")) + " is open to other hosts without"
                    + " --auth-tokens: whoever reaches it may step, overwrite, restore or delete any model");
        }
    }

    /** A failed bind, said plainly: the address, and the operating system's reason (port in use...). */
    private static IOException bindFailure(IOException e, List<ListenAddress> listen) {
        if (e.getMessage() == null || !e.getMessage().startsWith("Failed to bind") || e.getCause() == null) {
            return e;
        }
        Throwable root = e;
        while (root.getCause() != null) {
            root = root.getCause();
        }
        String reason = String.valueOf(root.getMessage());
        // Netty's native transport prefixes the errno: "bind(..) failed with error(-98): Address already in use"
        int errno = reason.indexOf("): ");
        if (reason.startsWith("bind(") && errno >= 0) {
            reason = reason.substring(errno + 3);
        }
        String where = listen.stream().map(Object::toString).collect(java.util.stream.Collectors.joining(", "));
        return new IOException(where + ": " + reason, e);
    }

    private NettyServerBuilder transport(ListenAddress address, ServerTls tls) throws IOException {
        NettyServerBuilder b;
        if (address instanceof ListenAddress.Unix unix) {
            if (!Epoll.isAvailable()) {
                throw new IOException(address + ": Unix domain sockets need Netty's epoll transport (Linux)",
                        Epoll.unavailabilityCause());
            }
            b = NettyServerBuilder.forAddress(new DomainSocketAddress(UnixSockets.prepare(unix.path()).toString()))
                    .channelType(EpollServerDomainSocketChannel.class);
        } else {
            ListenAddress.Tcp tcp = (ListenAddress.Tcp) address;
            InetSocketAddress socket = new InetSocketAddress(tcp.host(), tcp.port());
            b = (tls == null ? NettyServerBuilder.forAddress(socket)
                    : NettyServerBuilder.forAddress(socket, tls.credentials()))
                    .channelType(Epoll.isAvailable() ? EpollServerSocketChannel.class : NioServerSocketChannel.class);
        }
        return b.bossEventLoopGroup(boss)
                .workerEventLoopGroup(workers)
                .maxInboundMessageSize(SidecarServer.MAX_MESSAGE_BYTES)
                .flowControlWindow(FLOW_CONTROL_WINDOW)
                // Notice peers that vanish without a reset, so a half-sent step does not hold its
                // model's gradient buffers forever; let clients ping as often as every 10 s.
                .keepAliveTime(30, TimeUnit.SECONDS)
                .keepAliveTimeout(10, TimeUnit.SECONDS)
                .permitKeepAliveTime(10, TimeUnit.SECONDS);
    }

    public SidecarServer server() {
        return server;
    }

    public int port() {
        return server.port();
    }

    /** The health-only port, or -1 without one. */
    public int healthPort() {
        return server.healthPort();
    }

    /** The addresses it listens on, a TCP port 0 resolved to the port it got. */
    public List<ListenAddress> listening() {
        return listening;
    }

    /** Gracefully stops the server (see {@link SidecarServer#close}), then its engine and event loops. */
    @Override
    public void close() {
        if (server != null) {
            server.close();
        }
        engine.close();
        if (tls != null) {
            tls.close();
        }
        if (tokens != null) {
            tokens.close();
        }
        // Event loops end once their last channel is closed; waiting keeps them from outliving the server.
        boss.shutdownGracefully(0, 1, TimeUnit.SECONDS).awaitUninterruptibly();
        workers.shutdownGracefully(0, 1, TimeUnit.SECONDS).awaitUninterruptibly();
    }
}
