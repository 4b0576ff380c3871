package dev.optsidecar.client;

import com.sun.jna.LastErrorException;
import com.sun.jna.Library;
import com.sun.jna.Memory;
import com.sun.jna.Native;
import com.sun.jna.Platform;
import com.sun.jna.Pointer;
import dev.optsidecar.proto.v1.SegmentHandoffReply;

import java.io.IOException;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.security.SecureRandom;

/**
 * A sealed segment's memory and its handoff (see SegmentHandoffReply in the protocol): a memfd
 * sealed against shrinking, which the server maps, handed over with a random token on the
 * server's segment socket; the connection stays open while the segment is used, and is opened
 * anew (with a fresh token) when the server has lost it (a restart). Linux, 64-bit, through JNA;
 * {@link #unavailable} says why not elsewhere.
 */
final class SealedHandoff implements AutoCloseable {
    private static final int AF_UNIX = 1;
    private static final int SOCK_STREAM = 1;
    private static final int SOCK_CLOEXEC = 0x80000;
    private static final int SOL_SOCKET = 1;
    private static final int SCM_RIGHTS = 1;
    private static final int MSG_DONTWAIT = 0x40;
    private static final int MSG_PEEK = 0x2;
    private static final int MSG_NOSIGNAL = 0x4000;
    private static final int EAGAIN = 11;
    private static final int MFD_CLOEXEC = 1;
    private static final int MFD_ALLOW_SEALING = 2;
    private static final int F_ADD_SEALS = 1024 + 9;
    private static final int SEALS = 0x1 | 0x2 | 0x4; // F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW
    private static final SecureRandom RANDOM = new SecureRandom();

    /** The C library's calls, as JNA binds them. */
    interface C extends Library {
        int memfd_create(String name, int flags) throws LastErrorException;

        int ftruncate(int fd, long length) throws LastErrorException;

        int fcntl(int fd, int command, Object... argument) throws LastErrorException;

        int socket(int domain, int type, int protocol) throws LastErrorException;

        int connect(int fd, Pointer address, int length) throws LastErrorException;

        long sendmsg(int fd, Pointer message, int flags) throws LastErrorException;

        long recv(int fd, Pointer buffer, long length, int flags) throws LastErrorException;

        int close(int fd) throws LastErrorException;
    }

    private static final C LIBC;
    private static final String UNAVAILABLE;

    static {
        C libc = null;
        String why = null;
        if (!Platform.isLinux() || !Platform.is64Bit()) {
            why = "sealed segments need 64-bit Linux";
        } else {
            try {
                if (System.getProperty("jna.tmpdir") == null) {
                    System.setProperty("jna.tmpdir", System.getProperty("java.io.tmpdir"));
                }
                libc = Native.load("c", C.class);
            } catch (LinkageError | RuntimeException e) {
                why = "the C library cannot be called from Java here: " + e.getMessage();
            }
        }
        LIBC = libc;
        UNAVAILABLE = why;
    }

    /** Why this process cannot make sealed segments, or null when it can. */
    static String unavailable() {
        return UNAVAILABLE;
    }

    private final int memfd;
    /** The memfd, reopened for mapping. */
    final FileChannel channel;
    private int connection = -1;
    private byte[] token;

    /** A new memfd of {@code bytes}, sealed; not handed over yet. */
    SealedHandoff(long bytes) throws IOException {
        if (UNAVAILABLE != null) {
            throw new IOException(UNAVAILABLE);
        }
        try {
            memfd = LIBC.memfd_create("optsidecar-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        } catch (LastErrorException e) {
            throw new IOException("memfd_create: " + e.getMessage(), e);
        }
        try {
            LIBC.ftruncate(memfd, bytes);
            LIBC.fcntl(memfd, F_ADD_SEALS, SEALS);
            channel = FileChannel.open(Path.of("/proc/self/fd/" + memfd), StandardOpenOption.READ,
                    StandardOpenOption.WRITE);
        } catch (LastErrorException | IOException e) {
            LIBC.close(memfd);
            throw e instanceof IOException io ? io : new IOException(e.getMessage(), e);
        }
    }

    /** Whether the server still holds the segment: the connection it was handed over on is open. */
    boolean held() {
        if (connection < 0) {
            return false;
        }
        try {
            return LIBC.recv(connection, new Memory(1), 1, MSG_PEEK | MSG_DONTWAIT) != 0;
        } catch (LastErrorException e) {
            return e.getErrorCode() == EAGAIN;
        }
    }

    /** The token the server holds the segment under. */
    byte[] token() {
        return token.clone();
    }

    /**
     * Hands the memfd to the server listening on {@code socket} with a fresh token; throws an
     * IOException saying why it was refused or could not be sent.
     */
    void handOver(Path socket) throws IOException {
        closeConnection();
        byte[] path = socket.toString().getBytes(StandardCharsets.UTF_8);
        if (path.length >= 108) {
            throw new IOException("the socket path " + socket + " is too long for a Unix socket");
        }
        byte[] fresh = new byte[32];
        RANDOM.nextBytes(fresh);
        int s = -1;
        try {
            s = LIBC.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            Memory address = new Memory(110);
            address.clear();
            address.setShort(0, (short) AF_UNIX);
            address.write(2, path, 0, path.length);
            LIBC.connect(s, address, 2 + path.length + 1);
            send(s, fresh);
            SegmentHandoffReply reply = receiveReply(s);
            if (!reply.getRefused().isEmpty()) {
                throw new IOException("the server refused the sealed segment: " + reply.getRefused());
            }
        } catch (LastErrorException e) {
            if (s >= 0) {
                LIBC.close(s);
            }
            throw new IOException("cannot hand the sealed segment to " + socket + ": " + e.getMessage(), e);
        } catch (IOException | RuntimeException e) {
            if (s >= 0) {
                LIBC.close(s);
            }
            throw e;
        }
        connection = s;
        token = fresh;
    }

    /** One message: the token's length, the token, and the memfd attached. */
    private void send(int s, byte[] fresh) {
        Memory data = new Memory(1 + fresh.length);
        data.setByte(0, (byte) fresh.length);
        data.write(1, fresh, 0, fresh.length);
        Memory iov = new Memory(16);
        iov.setPointer(0, data);
        iov.setLong(8, 1 + fresh.length);
        Memory control = new Memory(24); // one cmsghdr (16 bytes) and one descriptor, padded to 8
        control.clear();
        control.setLong(0, 16 + Integer.BYTES);
        control.setInt(8, SOL_SOCKET);
        control.setInt(12, SCM_RIGHTS);
        control.setInt(16, memfd);
        Memory message = new Memory(56); // struct msghdr on LP64
        message.clear();
        message.setPointer(16, iov);
        message.setLong(24, 1);
        message.setPointer(32, control);
        message.setLong(40, 24);
        LIBC.sendmsg(s, message, MSG_NOSIGNAL);
    }

    private static SegmentHandoffReply receiveReply(int s) throws IOException {
        Memory header = new Memory(4);
        receiveExactly(s, header, 4);
        int length = header.getByteBuffer(0, 4).order(ByteOrder.LITTLE_ENDIAN).getInt();
        if (length < 0 || length > 1 << 16) {
            throw new IOException("the segment socket answered with a frame of " + length + " bytes");
        }
        Memory body = new Memory(Math.max(1, length));
        receiveExactly(s, body, length);
        return SegmentHandoffReply.parseFrom(body.getByteArray(0, length));
    }

    private static void receiveExactly(int s, Memory into, int n) throws IOException {
        for (int at = 0; at < n; ) {
            long got = LIBC.recv(s, into.share(at), n - at, 0);
            if (got <= 0) {
                throw new IOException("the segment socket closed before answering");
            }
            at += (int) got;
        }
    }

    private void closeConnection() {
        if (connection >= 0) {
            LIBC.close(connection);
            connection = -1;
        }
    }

    /** Lets go of the segment: the server unmaps it once no stream uses it. */
    @Override
    public void close() {
        closeConnection();
        try {
            channel.close();
        } catch (IOException ignored) {
            // a memfd has nothing to flush
        }
        LIBC.close(memfd);
    }
}
