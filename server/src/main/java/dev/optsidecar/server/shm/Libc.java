package dev.optsidecar.server.shm;

import com.sun.jna.LastErrorException;
import com.sun.jna.Library;
import com.sun.jna.Memory;
import com.sun.jna.Native;
import com.sun.jna.Platform;
import com.sun.jna.Pointer;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * The few C library calls sealed segments need and the JDK does not offer: a Unix socket that
 * receives a file descriptor (recvmsg with SCM_RIGHTS) and the seals of a memfd (fcntl). Linux
 * on a 64-bit machine only (the struct offsets below are LP64's, the same on x86-64 and arm64).
 */
final class Libc {
    private Libc() {}

    static final int AF_UNIX = 1;
    static final int SOCK_STREAM = 1;
    static final int SOCK_CLOEXEC = 0x80000;
    static final int SOL_SOCKET = 1;
    static final int SO_RCVTIMEO = 20;
    static final int SCM_RIGHTS = 1;
    static final int MSG_CTRUNC = 0x8;
    static final int MSG_NOSIGNAL = 0x4000;
    static final int MSG_CMSG_CLOEXEC = 0x40000000;
    static final int SHUT_RDWR = 2;
    static final int F_GET_SEALS = 1024 + 10;
    static final int F_SEAL_SHRINK = 0x2;
    static final int F_SEAL_WRITE = 0x8;
    static final int F_SEAL_FUTURE_WRITE = 0x10;
    static final int EINTR = 4;
    static final int EINVAL = 22;

    /** The functions, as JNA binds them from the C library. */
    interface C extends Library {
        int socket(int domain, int type, int protocol) throws LastErrorException;

        int bind(int fd, Pointer address, int length) throws LastErrorException;

        int listen(int fd, int backlog) throws LastErrorException;

        int accept4(int fd, Pointer address, Pointer length, int flags) throws LastErrorException;

        long recvmsg(int fd, Pointer message, int flags) throws LastErrorException;

        long recv(int fd, Pointer buffer, long length, int flags) throws LastErrorException;

        long send(int fd, Pointer buffer, long length, int flags) throws LastErrorException;

        int setsockopt(int fd, int level, int name, Pointer value, int length) throws LastErrorException;

        int shutdown(int fd, int how) throws LastErrorException;

        int close(int fd) throws LastErrorException;

        int fcntl(int fd, int command, Object... argument) throws LastErrorException;
    }

    private static final C C_LIBRARY;
    private static final String UNAVAILABLE;

    static {
        C library = null;
        String why = null;
        if (!Platform.isLinux() || !Platform.is64Bit()) {
            why = "sealed segments need 64-bit Linux";
        } else {
            try {
                if (System.getProperty("jna.tmpdir") == null) {
                    // JNA unpacks its stub library into ~/.cache by default, which a container with a
                    // read-only root file system lacks; the JVM's temporary directory is writable there.
                    System.setProperty("jna.tmpdir", System.getProperty("java.io.tmpdir"));
                }
                library = Native.load("c", C.class);
            } catch (LinkageError | RuntimeException e) {
                why = "the C library cannot be called from Java here: " + e.getMessage();
            }
        }
        C_LIBRARY = library;
        UNAVAILABLE = why;
    }

    /** Why sealed segments cannot work here, or null when they can. */
    static String unavailable() {
        return UNAVAILABLE;
    }

    static C c() {
        if (C_LIBRARY == null) {
            throw new IllegalStateException(UNAVAILABLE);
        }
        return C_LIBRARY;
    }

    /** A {@code struct sockaddr_un} for {@code path}, and its length; null if the path does not fit. */
    static Memory unixAddress(String path) {
        byte[] bytes = path.getBytes(StandardCharsets.UTF_8);
        if (bytes.length >= 108) {
            return null;
        }
        Memory address = new Memory(2 + 108);
        address.clear();
        address.setShort(0, (short) AF_UNIX);
        address.write(2, bytes, 0, bytes.length);
        return address;
    }

    static int unixAddressLength(String path) {
        return 2 + path.getBytes(StandardCharsets.UTF_8).length + 1;
    }

    /** Sets a socket's receive timeout (0: none). */
    static void receiveTimeout(int fd, long millis) {
        Memory timeval = new Memory(16);
        timeval.setLong(0, millis / 1000);
        timeval.setLong(8, (millis % 1000) * 1000);
        c().setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, timeval, 16);
    }

    /** What one recvmsg brought: bytes and the descriptors passed with them (each now ours to close). */
    record Received(byte[] bytes, List<Integer> descriptors, boolean truncated) {}

    /** Room for this many descriptors: more than one is refused, but each that came must be closed. */
    private static final int MAX_DESCRIPTORS = 8;
    private static final int CMSG_HEADER = 16;

    /**
     * One recvmsg of up to {@code capacity} bytes with room for descriptors (received close-on-exec);
     * an empty array at the end of the stream. Retries when interrupted by a signal.
     */
    static Received receive(int fd, int capacity) {
        Memory data = new Memory(capacity);
        Memory iov = new Memory(16);
        iov.setPointer(0, data);
        iov.setLong(8, capacity);
        int controlLength = CMSG_HEADER + MAX_DESCRIPTORS * Integer.BYTES;
        Memory control = new Memory(controlLength);
        control.clear();
        Memory message = new Memory(56);
        message.clear();
        message.setPointer(16, iov);
        message.setLong(24, 1);
        message.setPointer(32, control);
        message.setLong(40, controlLength);
        long n;
        while (true) {
            try {
                n = c().recvmsg(fd, message, MSG_CMSG_CLOEXEC);
                break;
            } catch (LastErrorException e) {
                if (e.getErrorCode() != EINTR) {
                    throw e;
                }
            }
        }
        List<Integer> descriptors = new ArrayList<>();
        long usedControl = message.getLong(40);
        for (long at = 0; at + CMSG_HEADER <= usedControl; ) {
            long length = control.getLong(at);
            if (length < CMSG_HEADER || at + length > usedControl) {
                break;
            }
            if (control.getInt(at + 8) == SOL_SOCKET && control.getInt(at + 12) == SCM_RIGHTS) {
                for (long d = at + CMSG_HEADER; d + Integer.BYTES <= at + length; d += Integer.BYTES) {
                    descriptors.add(control.getInt(d));
                }
            }
            at += (length + 7) & ~7L;
        }
        boolean truncated = (message.getInt(48) & MSG_CTRUNC) != 0;
        return new Received(data.getByteArray(0, (int) n), descriptors, truncated);
    }

    /** Sends all of {@code bytes} (no SIGPIPE if the peer is gone). */
    static void sendAll(int fd, byte[] bytes) {
        Memory buffer = new Memory(Math.max(1, bytes.length));
        buffer.write(0, bytes, 0, bytes.length);
        for (long at = 0; at < bytes.length; ) {
            try {
                at += c().send(fd, buffer.share(at), bytes.length - at, MSG_NOSIGNAL);
            } catch (LastErrorException e) {
                if (e.getErrorCode() != EINTR) {
                    throw e;
                }
            }
        }
    }

    static void closeQuietly(int fd) {
        try {
            c().close(fd);
        } catch (LastErrorException e) {
            // closed anyway (Linux frees the descriptor even when close reports an error)
        }
    }
}
