package dev.optsidecar.server.shm;

import com.google.protobuf.ByteString;
import dev.optsidecar.proto.v1.DoorbellError;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.server.OptError;

import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.ClosedChannelException;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.HashMap;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;
import java.util.logging.Logger;

/**
 * The doorbell socket (DoorbellFrame in the protocol): a Unix stream socket in --shm-dir over
 * which a shared-memory Step stream's commits and results travel as length-prefixed frames, so a
 * step costs a write and a read instead of an HTTP/2 exchange through gRPC's threads.
 *
 * <p>A connection proves which stream it serves with the secret that stream's StepOpen carried
 * (over gRPC, where the trainer was authenticated); until it does it counts as pending, and at
 * most {@link #MAX_PENDING} may be, each for at most {@link #HELLO_WAIT_NANOS}. Each attached
 * line reads on a thread of its own, so trainers' steps run side by side as they do on gRPC.
 */
public final class Doorbell implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(Doorbell.class.getName());

    /** The largest frame either side may send: a commit is small; a result lists a CRC per MiB. */
    public static final int MAX_FRAME_BYTES = 1 << 20;
    /** How long a connection has to send its secret, and the server waits for the StepOpen naming it. */
    static final long HELLO_WAIT_NANOS = TimeUnit.SECONDS.toNanos(5);
    /** Socket file names: this prefix, then as {@link SocketFiles#fresh} makes them. */
    private static final String PREFIX = "doorbell-";
    /** Connections that have not yet named an open stream; more are closed at once. */
    static final int MAX_PENDING = 64;
    private static final int MIN_SECRET_BYTES = SocketFiles.MIN_SECRET_BYTES;
    private static final int MAX_SECRET_BYTES = SocketFiles.MAX_SECRET_BYTES;

    /** The Step stream a line serves, as the line sees it. */
    public interface Stream {
        /** Takes {@code line} as the carrier of this stream's commits and results; false if it has one or ended. */
        boolean attach(DoorbellLine line);

        /** Runs a commit that came over the attached line; its result (or error) goes back through it. */
        void doorbellCommit(StepCommit commit);

        /** The attached line sent something that is not a commit: the stream fails with {@code error}. */
        void doorbellRejected(OptError error);

        /** The line ended (the client closed it, or it broke); the stream's results go on the stream again. */
        void doorbellClosed(DoorbellLine line);
    }

    private final Path socket;
    private final ServerSocketChannel server;
    /** Open streams by the SHA-256 of their secret (not the secret, so lookups reveal nothing by timing). */
    private final Map<String, Stream> streams = new HashMap<>();
    private final Semaphore pending = new Semaphore(MAX_PENDING);
    private final Set<DoorbellLine> lines = ConcurrentHashMap.newKeySet();
    private final Thread acceptor;
    /** How an error becomes the frame that reports it (the same status a gRPC call would end with). */
    private final Function<Throwable, DoorbellError> errorFrames;
    private volatile boolean closed;

    private Doorbell(Path socket, ServerSocketChannel server, Function<Throwable, DoorbellError> errorFrames) {
        this.socket = socket;
        this.server = server;
        this.errorFrames = errorFrames;
        this.acceptor = new Thread(this::acceptLoop, "optsidecar-doorbell-accept");
        acceptor.setDaemon(true);
    }

    /**
     * Binds a doorbell socket with a fresh name in {@code dir}, readable and writable by this user
     * only, and starts accepting. Throws if the socket cannot be bound (e.g. a path too long for
     * a Unix socket address). {@code errorFrames} turns an error into the frame that reports it.
     */
    public static Doorbell open(Path dir, Function<Throwable, DoorbellError> errorFrames) throws IOException {
        removeStale(dir);
        Path socket = SocketFiles.fresh(dir, PREFIX);
        ServerSocketChannel server = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        try {
            server.bind(UnixDomainSocketAddress.of(socket));
            Files.setPosixFilePermissions(socket, PosixFilePermissions.fromString("rw-------"));
        } catch (IOException | RuntimeException e) {
            server.close();
            Files.deleteIfExists(socket);
            throw e;
        }
        Doorbell doorbell = new Doorbell(socket, server, errorFrames);
        doorbell.acceptor.start();
        return doorbell;
    }

    static void removeStale(Path dir) {
        SocketFiles.removeStale(dir, PREFIX);
    }

    /** The socket's file name in --shm-dir, as ServerInfo reports it. */
    public String socketName() {
        return socket.getFileName().toString();
    }

    /** Lets a line that presents {@code secret} serve {@code stream}; a secret of the wrong length or in use is refused. */
    public synchronized void register(ByteString secret, Stream stream, String field) {
        checkSecret(secret, field);
        String key = digest(secret);
        if (streams.putIfAbsent(key, stream) != null) {
            throw OptError.invalid("%s: another open Step stream has this doorbell secret; draw a fresh one for each"
                    + " stream", field).withField(field);
        }
        notifyAll();
    }

    /** Forgets {@code secret}: no line can attach to its stream any more. */
    public synchronized void unregister(ByteString secret) {
        streams.remove(digest(secret));
    }

    /** Refuses a secret of the wrong length, naming {@code field}. */
    static void checkSecret(ByteString secret, String field) {
        if (secret.size() < MIN_SECRET_BYTES || secret.size() > MAX_SECRET_BYTES) {
            throw OptError.invalid("%s: a doorbell secret holds %d to %d bytes, drawn at random; this one has %d",
                    field, MIN_SECRET_BYTES, MAX_SECRET_BYTES, secret.size()).withField(field);
        }
    }

    /** The stream registered under {@code secret}, waiting for its StepOpen until {@code deadline}; null if none came. */
    synchronized Stream await(ByteString secret, long deadlineNanos) throws InterruptedException {
        String key = digest(secret);
        while (!closed) {
            Stream stream = streams.get(key);
            if (stream != null) {
                return stream;
            }
            long left = deadlineNanos - System.nanoTime();
            if (left <= 0) {
                return null;
            }
            TimeUnit.NANOSECONDS.timedWait(this, left);
        }
        return null;
    }

    /** A line's handshake is over, attached or not. */
    void handshakeDone() {
        pending.release();
    }

    DoorbellError errorFrame(Throwable error) {
        return errorFrames.apply(error);
    }

    void ended(DoorbellLine line) {
        lines.remove(line);
    }

    boolean closed() {
        return closed;
    }

    private void acceptLoop() {
        while (!closed) {
            SocketChannel channel;
            try {
                channel = server.accept();
            } catch (ClosedChannelException e) {
                return;
            } catch (IOException e) {
                if (!closed) {
                    LOG.warning(() -> "doorbell " + socket.getFileName() + ": accept failed: " + e);
                }
                continue;
            }
            if (closed || !pending.tryAcquire()) {
                closeQuietly(channel); // too many connections that have not named a stream yet
                continue;
            }
            try {
                DoorbellLine line = new DoorbellLine(this, channel);
                lines.add(line);
                line.start();
            } catch (IOException | RuntimeException e) {
                pending.release();
                closeQuietly(channel);
                LOG.warning(() -> "doorbell " + socket.getFileName() + ": cannot serve a connection: " + e);
            }
        }
    }

    /** Stops accepting, ends every line and removes the socket file. */
    @Override
    public void close() {
        synchronized (this) {
            closed = true;
            notifyAll();
        }
        try {
            server.close();
        } catch (IOException e) {
            // closing anyway
        }
        lines.forEach(DoorbellLine::close);
        try {
            Files.deleteIfExists(socket);
        } catch (IOException e) {
            LOG.warning(() -> "cannot remove the doorbell socket " + socket + ": " + e);
        }
    }

    static void closeQuietly(SocketChannel channel) {
        try {
            channel.close();
        } catch (IOException e) {
            // nothing more to do
        }
    }

    private static String digest(ByteString secret) {
        return SocketFiles.digest(secret.toByteArray());
    }
}
