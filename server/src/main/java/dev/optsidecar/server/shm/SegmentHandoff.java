package dev.optsidecar.server.shm;

import com.google.protobuf.ByteString;
import com.sun.jna.LastErrorException;
import com.sun.jna.Memory;
import dev.optsidecar.client.UnixCalls;
import dev.optsidecar.proto.v1.SegmentHandoffReply;
import dev.optsidecar.server.OptError;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Semaphore;
import java.util.concurrent.atomic.AtomicLong;
import java.util.logging.Logger;

/**
 * The segment socket (SegmentHandoffReply in the protocol): a Unix stream socket in --shm-dir
 * through which a co-located client hands the server a sealed memfd with a token, for the
 * server to map (see {@link SealedMemory}) instead of copying through a file. The segment is kept
 * while the client's connection stays open and found by its token when a StepOpen or PullRequest
 * names it; the connection's end (the client closed it, or died) releases it once no stream
 * uses it. Each connection waits on a thread of its own, and at most {@link #MAX_CONNECTIONS} may
 * be open: a segment costs the server a mapping of the client's memory, not memory of its own.
 */
public final class SegmentHandoff implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(SegmentHandoff.class.getName());
    private static final String PREFIX = "segments-";
    /** How long a connection has to send its token and descriptor. */
    static final long HELLO_WAIT_MILLIS = 5_000;
    static final int MAX_CONNECTIONS = 256;

    private final Path socket;
    private final int listening;
    private final Map<String, SealedMemory> byToken = new ConcurrentHashMap<>();
    private final Set<Integer> connections = new java.util.HashSet<>();
    private final Semaphore slots = new Semaphore(MAX_CONNECTIONS);
    private final AtomicLong handed = new AtomicLong();
    private final Thread acceptor;
    private volatile boolean closed;

    private SegmentHandoff(Path socket, int listening) {
        this.socket = socket;
        this.listening = listening;
        this.acceptor = new Thread(this::acceptLoop, "optsidecar-segments-accept");
        acceptor.setDaemon(true);
    }

    /**
     * Binds a segment socket with a fresh name in {@code dir}, for this user only, and starts
     * accepting; throws where sealed segments cannot work (not 64-bit Linux, no C library
     * reachable, a path too long for a socket address).
     */
    public static SegmentHandoff open(Path dir) throws IOException {
        if (UnixCalls.unavailable() != null) {
            throw new IOException(UnixCalls.unavailable());
        }
        SocketFiles.removeStale(dir, PREFIX);
        Path socket = SocketFiles.fresh(dir, PREFIX);
        String path = socket.toString();
        Memory address = UnixCalls.unixAddress(path);
        if (address == null) {
            throw new IOException("the path " + path + " is too long for a Unix socket");
        }
        int fd = -1;
        try {
            fd = UnixCalls.c().socket(UnixCalls.AF_UNIX, UnixCalls.SOCK_STREAM | UnixCalls.SOCK_CLOEXEC, 0);
            UnixCalls.c().bind(fd, address, UnixCalls.unixAddressLength(path));
            Files.setPosixFilePermissions(socket, PosixFilePermissions.fromString("rw-------"));
            UnixCalls.c().listen(fd, 64);
        } catch (LastErrorException | IOException e) {
            if (fd >= 0) {
                UnixCalls.closeQuietly(fd);
            }
            Files.deleteIfExists(socket);
            throw e instanceof IOException io ? io : new IOException("cannot listen on " + path + ": " + e.getMessage(), e);
        }
        SegmentHandoff handoff = new SegmentHandoff(socket, fd);
        handoff.acceptor.start();
        return handoff;
    }

    /** The socket's file name in --shm-dir, as ServerInfo reports it. */
    public String socketName() {
        return socket.getFileName().toString();
    }

    /**
     * The segment handed over with {@code token}, held for the caller, who closes what is made of
     * it; FAILED_PRECONDITION, SHARED_MEMORY_UNAVAILABLE naming {@code field} if there is none.
     */
    SealedMemory claim(ByteString token, String field) {
        SealedMemory memory = byToken.get(SocketFiles.digest(token.toByteArray()));
        if (memory == null || !memory.hold()) {
            throw OptError.precondition("%s: no sealed segment is held under this token: hand it over on the"
                    + " segment socket (ServerInfo.segment_socket) and keep that connection open while it is used;"
                    + " a restarted server holds none", field)
                    .withReason(OptError.Reason.SHARED_MEMORY_UNAVAILABLE).withField(field);
        }
        return memory;
    }

    /** How many sealed segments are held now (connections that handed one over), for tests. */
    public int held() {
        return byToken.size();
    }

    private void acceptLoop() {
        while (!closed) {
            int fd;
            try {
                fd = UnixCalls.c().accept4(listening, null, null, UnixCalls.SOCK_CLOEXEC);
            } catch (LastErrorException e) {
                if (closed) {
                    return;
                }
                if (e.getErrorCode() != UnixCalls.EINTR) {
                    LOG.warning(() -> "segment socket " + socket.getFileName() + ": accept failed: " + e.getMessage());
                    sleepBriefly(); // e.g. out of descriptors: do not spin
                }
                continue;
            }
            if (closed) {
                UnixCalls.closeQuietly(fd);
                return;
            }
            if (!slots.tryAcquire()) {
                refuse(fd, "the server holds " + MAX_CONNECTIONS + " sealed segments already; use a segment file");
                UnixCalls.closeQuietly(fd);
                continue;
            }
            synchronized (connections) {
                connections.add(fd);
            }
            Thread serving = new Thread(() -> serve(fd), "optsidecar-segment-" + fd);
            serving.setDaemon(true);
            serving.start();
        }
    }

    /** One connection: the token and descriptor, the reply, then waiting for its end. */
    private void serve(int fd) {
        List<Integer> descriptors = new ArrayList<>();
        SealedMemory memory = null;
        String key = null;
        try {
            Libc.receiveTimeout(fd, HELLO_WAIT_MILLIS);
            byte[] token = readToken(fd, descriptors);
            if (token == null) {
                return; // closed, or nothing within the wait
            }
            String why = token.length < SocketFiles.MIN_SECRET_BYTES || token.length > SocketFiles.MAX_SECRET_BYTES
                    ? "a token holds " + SocketFiles.MIN_SECRET_BYTES + " to " + SocketFiles.MAX_SECRET_BYTES
                    + " random bytes; this one has " + token.length
                    : descriptors.size() != 1 ? "exactly one file descriptor comes with the token; "
                    + descriptors.size() + " came" : null;
            if (why != null) {
                refuse(fd, why);
                return;
            }
            try {
                memory = SealedMemory.take("sealed-" + handed.incrementAndGet(), descriptors.remove(0));
            } catch (SealedMemory.Refused e) {
                refuse(fd, e.getMessage());
                return;
            }
            key = SocketFiles.digest(token);
            if (byToken.putIfAbsent(key, memory) != null) {
                key = null;
                refuse(fd, "another sealed segment is held under this token; draw a fresh one for each");
                return;
            }
            reply(fd, SegmentHandoffReply.getDefaultInstance());
            Libc.receiveTimeout(fd, 0);
            // Held until the client closes (or sends anything more, which it must not).
            UnixCalls.c().recv(fd, new Memory(1), 1, 0);
        } catch (LastErrorException e) {
            // the client went away, or the server is closing
        } catch (RuntimeException e) {
            LOG.warning(() -> "segment socket " + socket.getFileName() + ": a connection failed: " + e);
        } finally {
            descriptors.forEach(UnixCalls::closeQuietly);
            if (key != null) {
                byToken.remove(key, memory);
            }
            if (memory != null) {
                memory.release();
            }
            synchronized (connections) { // close() must not shut down a number reused meanwhile
                connections.remove(fd);
                UnixCalls.closeQuietly(fd);
            }
            slots.release();
        }
    }

    /**
     * The token: one length byte, then that many bytes, the descriptor coming with the first of
     * them; null at the end of the stream. Descriptors that came are added to {@code descriptors}.
     * A length out of bounds gives a token of that length, unread, to be refused for it; more
     * bytes than the length promised give an empty one.
     */
    private static byte[] readToken(int fd, List<Integer> descriptors) {
        ByteArrayOutputStream got = new ByteArrayOutputStream();
        int wanted = -1;
        do {
            int room = wanted < 0 ? 2 + SocketFiles.MAX_SECRET_BYTES : wanted - got.size();
            Libc.Received r = Libc.receive(fd, room);
            descriptors.addAll(r.descriptors());
            if (r.bytes().length == 0) {
                return null;
            }
            got.writeBytes(r.bytes());
            if (wanted < 0) {
                int length = got.toByteArray()[0] & 0xff;
                if (length < SocketFiles.MIN_SECRET_BYTES || length > SocketFiles.MAX_SECRET_BYTES) {
                    return new byte[length];
                }
                wanted = 1 + length;
                if (got.size() > wanted) {
                    return new byte[0];
                }
            }
        } while (got.size() < wanted);
        byte[] all = got.toByteArray();
        return java.util.Arrays.copyOfRange(all, 1, all.length);
    }

    private static void refuse(int fd, String why) {
        reply(fd, SegmentHandoffReply.newBuilder().setRefused(why).build());
    }

    private static void reply(int fd, SegmentHandoffReply reply) {
        byte[] body = reply.toByteArray();
        ByteBuffer frame = ByteBuffer.allocate(4 + body.length).order(ByteOrder.LITTLE_ENDIAN);
        frame.putInt(body.length).put(body);
        try {
            Libc.sendAll(fd, frame.array());
        } catch (LastErrorException e) {
            // the client left without waiting for its answer
        }
    }

    private static void sleepBriefly() {
        try {
            Thread.sleep(100);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /**
     * Ends every connection, as a restart would: each segment is released once no stream uses it,
     * and a client hands it over again for its next stream.
     */
    void endConnections() {
        synchronized (connections) {
            for (int fd : connections) {
                try {
                    UnixCalls.c().shutdown(fd, UnixCalls.SHUT_RDWR); // wakes its thread, which releases and closes
                } catch (LastErrorException ignored) {
                    // ended already
                }
            }
        }
    }

    /** Stops accepting, ends every connection (releasing segments no stream uses) and removes the socket file. */
    @Override
    public void close() {
        closed = true;
        try {
            UnixCalls.c().shutdown(listening, UnixCalls.SHUT_RDWR); // wakes the acceptor
        } catch (LastErrorException ignored) {
            // not listening any more
        }
        try {
            acceptor.join(1000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        UnixCalls.closeQuietly(listening);
        endConnections();
        try {
            Files.deleteIfExists(socket);
        } catch (IOException e) {
            LOG.warning(() -> "cannot remove the segment socket " + socket + ": " + e);
        }
    }
}
